"""What the site config implies: MIG layouts, node labels and taints, offerings, Kueue queues, batch Jobs.

Pure functions of a parsed ``SiteConfig`` (``aiinfn.config``) and the catalogue; nothing here reads
files or talks to a cluster. Cross-key rules that need these derivations live in ``aiinfn.validate``.
"""
