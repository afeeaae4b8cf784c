"""The REST service and web page behind ``agegender serve`` (needs the ``serve`` extra)."""
