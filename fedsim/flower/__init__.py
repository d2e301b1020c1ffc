"""The same pieces as a Flower app: fedsim's algorithm as a Flower strategy, its local
training as a ``ClientApp``, and ``fedsim deploy`` to write the app and run it on a local
SuperLink with SuperNodes (``docs/deploy.md``).

Modules: ``strategy`` (the server side: cohort, sample orders, reply checks, the
simulator's aggregation pipeline), ``server_app`` and ``client_app`` (the Flower
components), ``app_files`` (the app folder and its ``pyproject.toml``), ``local`` (a
SuperLink and SuperNodes on 127.0.0.1, stopped by PID), ``tls`` (certificates for a run)
and ``auth`` (SuperNode keys).
"""
