"""vimc.serve: serving and offline inference on Ray (the optional ``serve`` extra).

Read in this order:

- predictor.py: image bytes -> tensor -> top-k JSON, and the :class:`Bundle` a driver ships
  to its workers (the model, or an exported file's bytes);
- app.py: ``vimc serve``'s Ray Serve application (``@serve.batch``, warm replicas, HTTP);
- folder.py: ``vimc predict-folder`` (atomic, resumable JSON Lines; Ray Data with ``--ray``);
- cluster.py: a local Ray instance or an existing cluster;
- cli.py: the two commands' parsers and handlers.

Nothing here imports Ray until a command runs, so ``vimc`` works without the extra.
"""

from vimc.serve.cli import add_predict_folder_parser, add_serve_parser

__all__ = ["add_predict_folder_parser", "add_serve_parser"]
