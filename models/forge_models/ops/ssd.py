"""Chunked SSD scan (Mamba-2) in pure PyTorch, with document resets from seq_idx.

Legend: B batch, L length, H heads, P head dim, G groups, N state size, K chunks, Q chunk length.

The recurrence per head is  h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T,  y_t = h_t C_t.
A document start sets the log-decay of that step to -inf, so exp() wipes the carried state:
that is the whole reset mechanism. To keep -inf harmless every decay is built from *sums* of
log-decays (cumsum, masked cumsum, reversed cumsum) and never from differences of cumsums,
which would give -inf - -inf = nan. The algorithm follows the four steps of the SSD paper's
minimal implementation (intra-chunk, chunk states, state passing, state-to-output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segsum(a: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum_{k=j+1..i} a[..., k] for j <= i, -inf above the diagonal.

    Built with a masked cumsum (not cumsum differences) so -inf entries stay -inf, never nan.
    """
    size = a.shape[-1]
    a_rep = a.unsqueeze(-1).expand(*a.shape, size)  # [..., k, j] = a[k]
    strict_lower = torch.ones(size, size, dtype=torch.bool, device=a.device).tril(-1)
    a_rep = a_rep.masked_fill(~strict_lower, 0.0)
    out = torch.cumsum(a_rep, dim=-2)
    lower = torch.ones(size, size, dtype=torch.bool, device=a.device).tril(0)
    return out.masked_fill(~lower, float("-inf"))


def doc_starts(seq_idx_BL: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): True where a new document begins after position 0."""
    starts = torch.zeros_like(seq_idx_BL, dtype=torch.bool)
    starts[:, 1:] = seq_idx_BL[:, 1:] != seq_idx_BL[:, :-1]
    return starts


def ssd_scan_ref(
    x_BLHP: torch.Tensor,
    dt_BLH: torch.Tensor,
    A_H: torch.Tensor,
    B_BLGN: torch.Tensor,
    C_BLGN: torch.Tensor,
    chunk_size: int,
    seq_idx_BL: torch.Tensor | None = None,
    initial_state_BHPN: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD scan in fp32. dt must already be softplus'd; D skip and gating are the caller's.

    Returns (y (B, L, H, P) in fp32, final state (B, H, P, N) in fp32).
    """
    batch, length, num_heads, head_dim = x_BLHP.shape
    num_groups, d_state = B_BLGN.shape[2], B_BLGN.shape[3]
    x, dt, A = x_BLHP.float(), dt_BLH.float(), A_H.float()
    Bm = B_BLGN.float().repeat_interleave(num_heads // num_groups, dim=2)  # (B, L, H, N)
    Cm = C_BLGN.float().repeat_interleave(num_heads // num_groups, dim=2)

    log_decay_BLH = dt * A
    if seq_idx_BL is not None:
        starts = doc_starts(seq_idx_BL).unsqueeze(-1)
        log_decay_BLH = torch.where(starts, torch.full_like(log_decay_BLH, float("-inf")), log_decay_BLH)
    x_dt = x * dt.unsqueeze(-1)

    # Pad to whole chunks with dt = 0: decay exp(0) = 1 and zero input leave the state untouched.
    pad = (-length) % chunk_size
    if pad:
        x_dt = F.pad(x_dt, (0, 0, 0, 0, 0, pad))
        log_decay_BLH = F.pad(log_decay_BLH, (0, 0, 0, pad))
        Bm = F.pad(Bm, (0, 0, 0, 0, 0, pad))
        Cm = F.pad(Cm, (0, 0, 0, 0, 0, pad))
    num_chunks = (length + pad) // chunk_size
    q = chunk_size

    x_BKQHP = x_dt.reshape(batch, num_chunks, q, num_heads, head_dim)
    B_BKQHN = Bm.reshape(batch, num_chunks, q, num_heads, d_state)
    C_BKQHN = Cm.reshape(batch, num_chunks, q, num_heads, d_state)
    a_BHKQ = log_decay_BLH.reshape(batch, num_chunks, q, num_heads).permute(0, 3, 1, 2)
    a_cum_BHKQ = torch.cumsum(a_BHKQ, dim=-1)  # decay from chunk start through position l

    # 1. Within each chunk: quadratic (attention-like) form.
    decay_BHKQQ = torch.exp(segsum(a_BHKQ))
    y_diag = torch.einsum("bklhn,bkshn,bhkls,bkshp->bklhp", C_BKQHN, B_BKQHN, decay_BHKQQ, x_BKQHP)

    # 2. State at the end of each chunk from that chunk's inputs: decay over (s, end].
    rev_incl = torch.flip(torch.cumsum(torch.flip(a_BHKQ, [-1]), dim=-1), [-1])
    decay_to_end = torch.exp(F.pad(rev_incl[..., 1:], (0, 1)))
    states_BKHPN = torch.einsum("bklhn,bhkl,bklhp->bkhpn", B_BKQHN, decay_to_end, x_BKQHP)

    # 3. Pass states across chunks (a short recurrence in the same segsum form).
    if initial_state_BHPN is None:
        initial_state_BHPN = torch.zeros_like(states_BKHPN[:, 0])
    states_BKHPN = torch.cat([initial_state_BHPN.float().unsqueeze(1), states_BKHPN], dim=1)
    chunk_decay_BHKK = torch.exp(segsum(F.pad(a_cum_BHKQ[..., -1], (1, 0))))
    states_BKHPN = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay_BHKK, states_BKHPN)
    chunk_start_states, final_state = states_BKHPN[:, :-1], states_BKHPN[:, -1]

    # 4. Contribution of the state entering each chunk.
    y_off = torch.einsum("bklhn,bkhpn,bhkl->bklhp", C_BKQHN, chunk_start_states, torch.exp(a_cum_BHKQ))

    y = (y_diag + y_off).reshape(batch, num_chunks * q, num_heads, head_dim)[:, :length]
    return y, final_state


def ssd_step(
    x_BHP: torch.Tensor,
    dt_BH: torch.Tensor,
    A_H: torch.Tensor,
    B_BGN: torch.Tensor,
    C_BGN: torch.Tensor,
    state_BHPN: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of the recurrence in fp32: returns (y (B, H, P), new state). Constant memory."""
    num_heads, num_groups = x_BHP.shape[1], B_BGN.shape[1]
    Bm = B_BGN.float().repeat_interleave(num_heads // num_groups, dim=1)  # (B, H, N)
    Cm = C_BGN.float().repeat_interleave(num_heads // num_groups, dim=1)
    dt = dt_BH.float()
    decay = torch.exp(dt * A_H.float())[:, :, None, None]
    state = state_BHPN * decay + (x_BHP.float() * dt.unsqueeze(-1)).unsqueeze(-1) * Bm.unsqueeze(2)
    y = torch.einsum("bhpn,bhn->bhp", state, Cm)
    return y, state
