#!/usr/bin/env python3
"""AWS credential_process of AI_INFN notebooks: short-lived S3 credentials of the notebook's user.

Asks the hub's S3 credential service with the notebook's own JupyterHub token
($JUPYTERHUB_API_TOKEN) and prints its answer, the credential_process JSON (Version 1, keys,
session token, Expiration). In a batch job, which holds no JupyterHub token, it presents the
ServiceAccount token the kubelet keeps fresh in $AIINFN_S3_TOKEN_FILE instead (read on every
run). Nothing is stored: boto3, s3fs, pyarrow and rclone run it again before the credentials
expire. Usage: aiinfn-s3-credentials [--project NAME]
"""
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def main(argv):
    url = os.environ.get("AIINFN_S3_CREDENTIALS_URL", "")
    token_file = os.environ.get("AIINFN_S3_TOKEN_FILE", "")  # a batch job's pod token
    if token_file:
        try:
            with open(token_file) as f:
                auth = "Bearer " + f.read().strip()
        except OSError as err:
            print(f"aiinfn-s3-credentials: cannot read the pod token {token_file}: {err.strerror}", file=sys.stderr)
            return 1
    else:
        auth = "token " + os.environ.get("JUPYTERHUB_API_TOKEN", "")  # the notebook's own hub token
    if not url or auth in ("token ", "Bearer "):
        print("aiinfn-s3-credentials: AIINFN_S3_CREDENTIALS_URL and JUPYTERHUB_API_TOKEN (or AIINFN_S3_TOKEN_FILE) "
              "must be set (run it inside an AI_INFN notebook or batch job)", file=sys.stderr)
        return 2
    if argv[:1] == ["--project"] and len(argv) == 2:
        url += "?" + urllib.parse.urlencode({"project": argv[1]})
    elif argv:
        print("usage: aiinfn-s3-credentials [--project NAME]", file=sys.stderr)
        return 2
    req = urllib.request.Request(url, headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:
        try:
            why = json.load(err).get("error", "")
        except ValueError:
            why = ""
        print(f"aiinfn-s3-credentials: {err.code} {why or err.reason}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"aiinfn-s3-credentials: the credential service did not answer: {err}", file=sys.stderr)
        return 1
    json.dump(body, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
