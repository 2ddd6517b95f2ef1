"""The offline tools: the ``aiinfn`` command (render, check, diff, clone, gpus, report) and the engine that
runs the Pulumi program under Pulumi's mock runtime. The top floor: may import any folder of the program."""
