#!/usr/bin/env python3
"""AWS credential_process of the S3 CSI node plugin's rclone mounts: short-lived S3 credentials of one pod.

rclone (its AWS SDK, through the per-volume AWS config the plugin writes) runs this inside the plugin's
container whenever the credentials it holds expire. It reads the pod's ServiceAccount token (audience
``aiinfn-s3``, bound to the pod) from the volume's token file, which the plugin rewrites on every
republish, asks the S3 credential service ``GET <url>[?project=P]`` with ``Authorization: Bearer <token>``
and prints its answer, the credential_process JSON (Version 1, AccessKeyId, SecretAccessKey, SessionToken,
Expiration). Nothing is stored. Standard library only.

Usage: s3mount_credentials.py --token-file PATH --url URL [--project NAME]
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

USAGE = "usage: s3mount_credentials.py --token-file PATH --url URL [--project NAME]"
KEYS = ("Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")


def parse(argv):
    opts = {}
    it = iter(argv)
    for arg in it:
        if arg not in ("--token-file", "--url", "--project") or arg[2:] in opts:
            raise ValueError(USAGE)
        value = next(it, None)
        if not value:
            raise ValueError(USAGE)
        opts[arg[2:]] = value
    if "token-file" not in opts or "url" not in opts:
        raise ValueError(USAGE)
    return opts


def fail(message):
    print(f"s3mount-credentials: {message}", file=sys.stderr)
    return 1


def main(argv):
    try:
        opts = parse(argv)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        with open(opts["token-file"], encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as err:
        return fail(f"cannot read the pod token {opts['token-file']}: {err.strerror}")
    if not token:
        return fail(f"the pod token file {opts['token-file']} is empty")
    url = opts["url"]
    if "project" in opts:
        url += "?" + urllib.parse.urlencode({"project": opts["project"]})
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:
        try:
            why = json.load(err).get("error", "")
        except (ValueError, AttributeError):
            why = ""
        return fail(f"the credential service answered {err.code} {why or err.reason}")
    except (OSError, ValueError) as err:
        return fail(f"the credential service did not answer: {getattr(err, 'reason', err)}")
    if not isinstance(body, dict) or body.get("Version") != 1 or any(not body.get(k) for k in KEYS):
        return fail("the credential service's answer is not credential_process JSON (Version 1, keys, Expiration)")
    json.dump(body, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
