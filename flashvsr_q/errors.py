"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class FlashVSRError(Exception):
    """A problem the user can fix (bad input, missing file, unavailable backend); never a bug."""


class CheckpointError(FlashVSRError):
    """A checkpoint is missing, corrupt, or does not match the model."""


class BackendUnavailable(FlashVSRError):
    """A requested attention backend, quantization scheme or device cannot run here."""
