"""CityWatch: the ``citywatch`` command line and the demo district (``citywatch.cli``)."""
