"""AI_INFN platform as code: site config, accelerator catalogue, offline engine and CLI."""

__version__ = "0.1.0"
