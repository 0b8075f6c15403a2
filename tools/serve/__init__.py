"""The web page and JSON API: the FastAPI app, the micro-batcher, the search box, the static page."""
