"""The platform's own Prometheus exporters (run in the platform runtime image).

- ``allocation``: accelerators allocatable vs allocated per node, model/MIG profile, namespace and user,
  computed from the Kubernetes node and pod objects.
- ``storage``: bytes and files per home and project folder of the NFS export.
"""
