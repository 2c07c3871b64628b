"""The one video and image I/O stack (PyAV, Pillow); nothing here imports torch.

- :mod:`~flashvsr_q.video.sources`: ``open_source`` (a video, an image or an image folder as a ``FrameSource`` that
  streams ``Frame`` objects), ``list_images``, ``list_videos``, ``read_image``, ``write_image``, ``ImageFolderWriter``;
- :mod:`~flashvsr_q.video.segments`: ``SegmentedWriter`` (a video written as resumable segments, then remuxed with
  the input's audio and subtitles), ``EncoderSettings``;
- :mod:`~flashvsr_q.video.clips`: ``probe``, ``read_frames``, ``ClipWriter`` (lossless clips for evaluation) and
  ``codec_roundtrip`` (degradation).
"""
