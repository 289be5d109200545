"""Tracking a video with a tracker config: the API behind tools/track.py.

:func:`track_video` runs a whole job (frames in, result files out);
:func:`init_tracker` and :func:`inference_video` are its parts, for use in
other programs::

    cfg = tracker_config('configs/sfc_davis.py', checkpoint='fc.pth')
    model = init_tracker(cfg, 'cuda')
    reader = open_video('data/DAVIS/JPEGImages/480p/blackswan')
    for frame in inference_video(model, reader, '00000.png', 'mask'):
        ...  # frame.name, frame.image (BGR), frame.pred (H, W) ids
"""
import os.path as osp
import queue
import resource
import threading
import time
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

import sfc_plugin
from sfc_plugin.datasets import open_video
from sfc_plugin.datasets.utils import is_image_file
from sfc_plugin.datasets.video_reader import VideoReader
from sfc_plugin.registry import MODELS
from sfc_plugin.utils import register_all_modules
from sfc_plugin.utils.progress import FrameProgressBar

from .results_writer import TrackingResultsWriter

PACKAGE_CONFIGS = osp.join(osp.dirname(sfc_plugin.__file__), '.mim',
                           'configs')
DEFAULT_CONFIG = 'fc_davis.py'
LABEL_KINDS = ('mask', 'parts', 'keypoints')
_LABEL_PATH_KEYS = dict(
    mask='seg_map_path', parts='seg_map_path', keypoints='joints_path')


def find_config(config: str) -> str:
    """A config path, or the name of a config shipped with sfc_plugin."""
    if osp.isfile(config):
        return config
    shipped = osp.join(PACKAGE_CONFIGS, config)
    if not osp.isabs(config) and osp.isfile(shipped):
        return shipped
    raise FileNotFoundError(
        f'Config not found: "{config}" (neither a file nor a config of '
        f'sfc_plugin in {PACKAGE_CONFIGS})')


def apply_checkpoint(cfg: Config, checkpoint: str,
                     allow_load_from: bool = True) -> None:
    """Points the config at a checkpoint.

    Tracker configs name the part of the model the checkpoint is for in
    ``checkpoint_field`` (e.g. the FC encoder of a fused SFC tracker), and
    the checkpoint is loaded there; other configs load it into the whole
    model through the Runner (``load_from``), where ``allow_load_from``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The config has no ``checkpoint_field`` and
            ``allow_load_from`` is off.
    """
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'Checkpoint file not found: "{checkpoint}"')
    field = cfg.get('checkpoint_field')
    if field:
        cfg.merge_from_dict({field: checkpoint})
    elif allow_load_from:
        cfg.load_from = checkpoint
    else:
        raise ValueError('The config has no checkpoint_field, so it does '
                         'not say which network the checkpoint is for')


def apply_backend(cfg: Config, backend: Optional[str],
                  backend_model: Optional[str] = None) -> None:
    """Chooses where the tracker's encoder runs.

    Args:
        cfg (Config): A tracker config.
        backend (str, optional): None keeps the config's choice; 'torch'
            (the encoder itself), 'onnxruntime' or 'tensorrt'.
        backend_model (str, optional): The ONNX file or TensorRT engine the
            deployed backends need.
    """
    if backend is None:
        if backend_model is not None:
            raise ValueError('A backend model was given without its '
                             'backend (--backend onnxruntime or tensorrt)')
        return
    if backend == 'torch':
        cfg.model.backend = None
        return
    if backend not in ('onnxruntime', 'tensorrt'):
        raise ValueError('backend must be torch, onnxruntime or tensorrt, '
                         f'got {backend!r}')
    if not backend_model:
        raise ValueError(f'The {backend} backend needs a backend model (an '
                         'ONNX file or a TensorRT engine: --backend-model)')
    if not osp.isfile(backend_model):
        raise FileNotFoundError(f'Backend model not found: "{backend_model}"')
    key = 'model' if backend == 'onnxruntime' else 'engine'
    cfg.model.backend = {'type': backend, key: backend_model}


def label_kind(first_labels: str, num_classes: Optional[int] = None) -> str:
    """What a first-frame label file holds: 'mask', 'parts' or 'keypoints'.

    A JSON file holds keypoints; an image holds object masks, or part maps
    when the number of part classes is given.
    """
    if first_labels.lower().endswith('.json'):
        if num_classes is not None:
            raise ValueError(f'"{first_labels}" holds keypoints; a number '
                             'of classes is for part maps')
        return 'keypoints'
    if is_image_file(first_labels):
        return 'mask' if num_classes is None else 'parts'
    raise ValueError(f'First-frame labels "{first_labels}": expected a PNG '
                     'mask or part map, or a keypoint JSON file')


def tracking_pipeline(kind: str, num_classes: Optional[int] = None
                      ) -> Compose:
    """Frame loading, first-frame label loading and packing for ``kind``."""
    if kind not in LABEL_KINDS:
        raise ValueError(f'kind must be one of {LABEL_KINDS}, got {kind!r}')
    loader = dict(
        mask=dict(type='LoadObjectMask'),
        parts=dict(type='LoadPartMap', num_classes=num_classes),
        keypoints=dict(type='LoadKeypoints'))[kind]
    register_all_modules()
    return Compose([
        dict(type='LoadVideoFrame'), loader,
        dict(type='PackVideoFrameInputs')
    ])


def tracker_config(config: str = DEFAULT_CONFIG,
                   checkpoint: Optional[str] = None,
                   cfg_options: Optional[dict] = None,
                   backend: Optional[str] = None,
                   backend_model: Optional[str] = None,
                   kind: str = 'mask',
                   num_classes: Optional[int] = None) -> Config:
    """A tracker config, set up for one tracking job.

    The labels decide the task: ``kind`` sets the model's label codec
    (``MaskCodec`` for masks, with ``num_classes`` for part maps;
    ``KeypointCodec`` for keypoints, the config's own if it has one).

    Args:
        config (str): Config file, or the name of a shipped config
            (:func:`find_config`). Defaults to 'fc_davis.py'.
        checkpoint (str, optional): Weights (:func:`apply_checkpoint`).
        cfg_options (dict, optional): Overrides, as ``--cfg-options``.
        backend (str, optional): See :func:`apply_backend`.
        backend_model (str, optional): See :func:`apply_backend`.
        kind (str): 'mask', 'parts' or 'keypoints'. Defaults to 'mask'.
        num_classes (int, optional): Part classes, background included.
    """
    cfg = Config.fromfile(find_config(config))
    if cfg.get('model', {}).get('type') != 'SFCTracker':
        raise ValueError(f'Config "{config}" does not define an SFCTracker '
                         'model: it is not a tracking config')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if checkpoint is not None:
        apply_checkpoint(cfg, checkpoint, allow_load_from=False)
    apply_backend(cfg, backend, backend_model)
    codec = cfg.model.get('label_codec', {})
    if kind == 'keypoints':
        if codec.get('type') != 'KeypointCodec':
            cfg.model.label_codec = dict(type='KeypointCodec')
    else:
        cfg.model.label_codec = dict(type='MaskCodec', num_classes=num_classes)
    return cfg


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def init_tracker(cfg: Config, device: Optional[str] = None, seed: int = 0):
    """Builds the config's tracker in evaluation mode on ``device``.

    Args:
        cfg (Config): A tracker config (:func:`tracker_config`).
        device (str, optional): 'cpu', 'cuda', 'cuda:1', ... Defaults to
            CUDA when available, else the CPU.
        seed (int): Seed of the initialisation of networks that get no
            checkpoint, so that a random baseline is the same every run;
            the global random state is left as it was. Defaults to 0.
    """
    device = device or default_device()
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError(f'Device "{device}" asked for, but CUDA is not '
                           'available here (use --device cpu)')
    register_all_modules()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS.build(cfg.model)
    return model.to(device).eval()


def _with_video_info(reader: VideoReader, item: dict) -> dict:
    """A reader's frame item with its video's name and length."""
    item = dict(item, video=reader.name)
    if reader.num_frames:
        item['video_length'] = reader.num_frames
    return item


def first_frame_inputs(reader: VideoReader, first_item: dict,
                       first_labels: str, kind: str,
                       pipeline: Compose) -> dict:
    """Frame 0 through the pipeline, its labels loaded and checked.

    Raises:
        ValueError: Labels of another size than the frames (named), or a
            first mask holding no object.
    """
    item = _with_video_info(reader, first_item)
    item[_LABEL_PATH_KEYS[kind]] = first_labels
    packed = pipeline(item)
    if kind != 'keypoints' and not packed['data_samples'].gt_seg_map.any():
        raise ValueError(f'First-frame labels "{first_labels}" hold no '
                         'object: every pixel is 0 (background)')
    return packed


def _prefetched(items: Iterable, depth: int) -> Iterator:
    """``items`` produced by a background thread, ``depth`` ahead at most."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as err:  # re-raised in the consumer
            put((err, None))

    thread = threading.Thread(target=work, name='frame-prefetch',
                              daemon=True)
    thread.start()
    try:
        while True:
            err, item = buffer.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class TrackedFrame(NamedTuple):
    """One frame of a tracking run."""
    name: str  #: Frame name (file stem, or %05d for video files).
    image: np.ndarray  #: (H, W, 3) uint8 BGR frame as the tracker saw it.
    pred: np.ndarray  #: (H, W) uint8 ids, or (J, 2) float32 (x, y).


def inference_video(model,
                    reader: VideoReader,
                    first_labels: str,
                    kind: str = 'mask',
                    num_classes: Optional[int] = None,
                    prefetch: int = 4) -> Iterator[TrackedFrame]:
    """Streams a video through a tracker, frame 0's labels propagated.

    Frames are decoded and packed ``prefetch`` frames ahead in a background
    thread; each goes through ``model.test_step``, as in mmengine's test
    loop. Frame 0's prediction is its given labels.

    Args:
        model (SFCTracker): From :func:`init_tracker`, with the codec that
            fits ``kind``.
        reader (VideoReader): :func:`open_video`'s frame source.
        first_labels (str): Frame 0's mask or part map PNG, or keypoint
            JSON.
        kind (str): 'mask', 'parts' or 'keypoints'. Defaults to 'mask'.
        num_classes (int, optional): Part classes, for 'parts'.
        prefetch (int): Frames decoded ahead. Defaults to 4.

    Yields:
        TrackedFrame: name, image, prediction of each frame in order.
    """
    pipeline = tracking_pipeline(kind, num_classes)

    def packed_frames() -> Iterator[dict]:
        for item in reader:
            if item['frame_id'] == 0:
                yield first_frame_inputs(reader, item, first_labels, kind,
                                         pipeline)
            else:
                yield pipeline(_with_video_info(reader, item))

    pred_key = model.codec.pred_key
    for packed in _prefetched(packed_frames(), prefetch):
        sample = model.test_step(pseudo_collate([packed]))[0]
        yield TrackedFrame(
            name=sample.frame_name,
            image=packed['inputs'].permute(1, 2, 0).numpy(),
            pred=sample.get(pred_key).numpy())


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def track_video(source: str,
                first_labels: str,
                out_dir: str,
                config: str = DEFAULT_CONFIG,
                checkpoint: Optional[str] = None,
                cfg_options: Optional[dict] = None,
                backend: Optional[str] = None,
                backend_model: Optional[str] = None,
                device: Optional[str] = None,
                num_classes: Optional[int] = None,
                overlay: bool = True,
                overwrite: bool = False,
                progress: bool = True,
                max_frames: Optional[int] = None) -> dict:
    """Tracks a video from its first frame's labels; writes the results.

    Everything that can be checked before the work starts is: the frame
    source (readable, no gaps, one frame size), the labels (readable, the
    frames' size, at least one object), the output folder (new or empty,
    unless ``overwrite``), the config, checkpoint and backend. Results are
    written as :class:`TrackingResultsWriter` describes, ending with
    ``summary.json``; a failed or interrupted run leaves none of them.

    Args:
        source (str): Frame folder or video file.
        first_labels (str): Frame 0's mask / part map PNG or keypoint JSON.
        out_dir (str): Output folder.
        config (str): Tracker config or shipped config name.
            Defaults to 'fc_davis.py'.
        checkpoint (str, optional): FC (or the config's field) weights;
            random initialisation without one.
        cfg_options (dict, optional): Config overrides.
        backend (str, optional): 'torch', 'onnxruntime' or 'tensorrt'.
        backend_model (str, optional): ONNX file or TensorRT engine.
        device (str, optional): Defaults to CUDA when available.
        num_classes (int, optional): Part classes (the labels are a part
            map).
        overlay (bool): Write ``overlay.mp4``. Defaults to True.
        overwrite (bool): Replace a non-empty ``out_dir``.
            Defaults to False.
        progress (bool): Show a progress bar on stderr. Defaults to True.
        max_frames (int, optional): Stop after this many frames.

    Returns:
        dict: The summary, as written to ``summary.json``.
    """
    reader = open_video(source)
    kind = label_kind(first_labels, num_classes)
    first_frame_inputs(reader, next(iter(reader)), first_labels, kind,
                       tracking_pipeline(kind, num_classes))
    cfg = tracker_config(config, checkpoint, cfg_options, backend,
                         backend_model, kind, num_classes)
    with TrackingResultsWriter(
            out_dir, kind, overlay=overlay,
            fps=getattr(reader, 'fps', None) or 24.0,
            overwrite=overwrite) as writer:
        model = init_tracker(cfg, device)
        device = str(next(model.parameters()).device)
        total = reader.num_frames
        if max_frames is not None and total:
            total = min(total, max_frames)
        bar = FrameProgressBar(total) if progress else None
        start = time.perf_counter()
        frames = inference_video(model, reader, first_labels, kind,
                                 num_classes)
        count = 0
        for frame in frames:
            writer.write(frame.name, frame.image, frame.pred)
            count += 1
            if bar is not None:
                bar.update()
            if max_frames is not None and count >= max_frames:
                break
        frames.close()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        summary = dict(
            complete=True,
            source=osp.abspath(source),
            first_labels=osp.abspath(first_labels),
            label_kind=kind,
            frames=count,
            frame_size=list(reader.frame_size),
            config=find_config(config),
            checkpoint=checkpoint,
            backend=cfg.model.get('backend') or dict(type='torch'),
            device=device,
            propagator={
                k: cfg.model.propagator.get(k)
                for k in ('topk', 'radius', 'context_frames', 'temperature')
                if k in cfg.model.propagator
            },
            seconds=round(seconds, 3),
            frames_per_second=round(count / seconds, 3) if seconds else None,
            peak_rss_mib=round(peak_rss_mib(), 1),
            sfc_plugin=sfc_plugin.__version__,
            torch=torch.__version__,
            finished=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        )
        if device.startswith('cuda'):
            summary['peak_cuda_memory_mib'] = round(
                torch.cuda.max_memory_allocated() / 2**20, 1)
        writer.commit(summary)
    return summary


__all__ = [
    'track_video', 'init_tracker', 'inference_video', 'tracker_config',
    'tracking_pipeline', 'label_kind', 'apply_checkpoint', 'apply_backend',
    'find_config', 'first_frame_inputs', 'TrackedFrame', 'DEFAULT_CONFIG'
]
