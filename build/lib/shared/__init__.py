"""Code shared by the webui and the worker: settings, factories, models, queue."""
