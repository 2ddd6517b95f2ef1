"""Builds the PolicyPack for `pulumi preview --policy-pack policies`. Tests never import this file."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pulumi_policy import PolicyPack

from policies.rules import ALL_POLICIES

PolicyPack(name="aiinfn-platform", policies=ALL_POLICIES)
