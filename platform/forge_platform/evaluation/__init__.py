"""Evaluation of trained stages: held-out loss and Phonebook lookup through real generation."""
