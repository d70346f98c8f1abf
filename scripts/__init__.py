"""Drivers run from the checkout (``make demo``, ``make full``): outside the library package."""
