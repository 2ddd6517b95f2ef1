"""The offline engine: the real program under Pulumi's mock runtime, and what it renders."""
