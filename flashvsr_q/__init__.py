"""flashvsr-q: FlashVSR video super-resolution made practical on consumer GPUs.

The library API, top to bottom:

- ``flashvsr_q.model``: the FlashVSR network (DiT, LQ projection, TCDecoder), configs, checkpoint loading;
- ``flashvsr_q.attention``: LCSA block selection and the attention backend registry;
- ``flashvsr_q.infer``: the tiled streaming upscaler, video I/O, memory planner;
- ``flashvsr_q.quant``: recipes, PTQ, calibration, sensitivity, QAT, compressed checkpoints;
- ``flashvsr_q.eval``: degradation, quality metrics, reports;
- ``flashvsr_q.data``: footage sources for calibration, QAT and training.
"""

__version__ = "0.1.0"

from flashvsr_q.errors import BackendUnavailable, CheckpointError, FlashVSRError

__all__ = ["BackendUnavailable", "CheckpointError", "FlashVSRError", "__version__"]
