"""An S3-compatible server for the object-storage tests: moto's, on 127.0.0.1, with authentication on.

One bucket and one IAM user allowed s3:*; once they exist every request is authenticated, so a wrong
key is refused as AWS would refuse it. Shared by the data pipeline's, the campaign's and the
production MLflow stack's tests.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

AWS_ENV_NAMES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")
"""Every variable through which a test's own environment could reach another store."""


def _moto_api(endpoint: str, action: str, body: bytes) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/{action}", data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


@contextmanager
def s3_server(bucket: str = "forge") -> Iterator[dict[str, str]]:
    """The server with `bucket` and the user's keys; yields the environment that names them."""
    import boto3
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    setup = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                 aws_secret_access_key="setup")
    try:
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="forge")
        iam.put_user_policy(UserName="forge", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="forge")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=bucket)
        _moto_api(endpoint, "reset-auth", b"0")  # every request from here on is authenticated
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_REGION": "us-east-1",
               "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        _moto_api(endpoint, "reset-auth", b"inf")
        _moto_api(endpoint, "reset", b"")
        server.stop()
        werkzeug.setLevel(level)


@contextmanager
def s3_environment(bucket: str = "forge") -> Iterator[dict[str, str]]:
    """`s3_server`, with this process's environment naming it (and nothing else AWS) meanwhile."""
    with s3_server(bucket) as env, pytest.MonkeyPatch.context() as mp:
        for name in AWS_ENV_NAMES:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env
