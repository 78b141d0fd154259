"""Publishing a built dataset: its card (``card``, pictures in ``figures``) and the upload to the Hub (``hub``)."""
