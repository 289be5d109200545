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
import contextlib
import itertools
import os
import os.path as osp
import queue
import resource
import threading
import time
from collections import deque
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from mmcv.transforms import BaseTransform, Compose
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

import sfc_plugin
from sfc_plugin.datasets import open_video
from sfc_plugin.datasets.utils import is_image_file
from sfc_plugin.datasets.video_reader import VideoReader
from sfc_plugin.ops import load_native_ops, matching_kernel
from sfc_plugin.registry import MODELS, TRANSFORMS
from sfc_plugin.utils import register_all_modules
from sfc_plugin.utils.config import (
    apply_checkpoint,
    build_from_config,
    check_env_cfg,
    find_config,
    load_config,
)
from sfc_plugin.utils.fileio import check_output_location, sha256
from sfc_plugin.utils.host_copy import HostCopy, pinned_for
from sfc_plugin.utils.progress import FrameProgressBar
from sfc_plugin.utils.threads import lower_thread_priority
from sfc_plugin.utils.validation import check_integer

from .anchors import AnchorsArg, anchor_inputs, resolve_anchors
from .results_writer import TrackingResultsWriter

DEFAULT_CONFIG = 'fc_davis.py'
LABEL_KINDS = ('mask', 'parts', 'keypoints')
_LABEL_PATH_KEYS = dict(
    mask='seg_map_path', parts='seg_map_path', keypoints='joints_path')
DEPLOYED_BACKENDS = ('onnxruntime', 'tensorrt')


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
    backend_model = None if backend_model is None else os.fspath(
        backend_model)
    if backend is None:
        if backend_model is not None:
            raise ValueError('A backend model was given without its '
                             'backend (--backend onnxruntime or tensorrt)')
        return
    if backend == 'torch':
        if backend_model is not None:
            raise ValueError(f'The torch backend runs the encoder itself: '
                             f'the backend model "{backend_model}" would be '
                             'ignored (give --backend onnxruntime or '
                             'tensorrt with it)')
        cfg.model.backend = None
        return
    if backend not in DEPLOYED_BACKENDS:
        raise ValueError('backend must be torch, onnxruntime or tensorrt, '
                         f'got {backend!r}')
    if not backend_model:
        raise ValueError(f'The {backend} backend needs a backend model (an '
                         'ONNX file or a TensorRT engine: --backend-model)')
    if not osp.isfile(backend_model):
        raise FileNotFoundError(f'Backend model not found: "{backend_model}"')
    key = 'model' if backend == 'onnxruntime' else 'engine'
    cfg.model.backend = {'type': backend, key: backend_model}


def check_backend_checkpoint(cfg: Config,
                             checkpoint: Optional[str] = None) -> None:
    """Checks that a checkpoint given with a deployed backend is the one
    its model was exported from: the deployed model holds its own weights,
    so the checkpoint is accepted only where its export report proves it
    was the source (the results would be credited to it).

    Raises:
        ValueError: It was not, or it cannot be shown, with what to do.
    """
    deployed = (cfg.model.get('backend') or {}).get('type')
    if checkpoint is None or deployed not in DEPLOYED_BACKENDS:
        return
    from sfc_plugin.deploy.provenance import check_exported_from
    check_exported_from(
        cfg.model.backend.get('model') or cfg.model.backend.get('engine'),
        checkpoint)


def label_kind(first_labels: str, num_classes: Optional[int] = None) -> str:
    """What a first-frame label file holds: 'mask', 'parts' or 'keypoints'.

    A JSON file holds keypoints; an image holds object masks, or part maps
    when the number of part classes is given.
    """
    first_labels = os.fspath(first_labels)
    if num_classes is not None:
        check_integer('label_kind', 'num_classes', num_classes)
    if first_labels.lower().endswith('.json'):
        if num_classes is not None:
            raise ValueError(f'"{first_labels}" holds keypoints; a number '
                             'of classes is for part maps')
        return 'keypoints'
    if is_image_file(first_labels):
        return 'mask' if num_classes is None else 'parts'
    raise ValueError(f'First-frame labels "{first_labels}": expected a PNG '
                     'mask or part map, or a keypoint JSON file')


def label_loader(kind: str, num_classes: Optional[int] = None
                 ) -> BaseTransform:
    """The transform that loads (and checks) ``kind`` labels for a tracker:
    frame 0's and anchor frames'."""
    if kind not in LABEL_KINDS:
        raise ValueError(f'kind must be one of {LABEL_KINDS}, got {kind!r}')
    register_all_modules()
    return TRANSFORMS.build(dict(
        mask=dict(type='LoadObjectMask'),
        parts=dict(type='LoadPartMap', num_classes=num_classes),
        keypoints=dict(type='LoadKeypoints'))[kind])


def tracking_pipeline(kind: str, num_classes: Optional[int] = None
                      ) -> Compose:
    """Frame loading, label loading and packing for ``kind``."""
    loader = label_loader(kind, num_classes)
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
                   num_classes: Optional[int] = None,
                   precision: Optional[str] = None) -> Config:
    """A tracker config, set up for one tracking job.

    The labels decide the task: ``kind`` sets the model's label codec
    (``MaskCodec`` for masks, with ``num_classes`` for part maps;
    ``KeypointCodec`` for keypoints, the config's own if it has one).

    A checkpoint given with a deployed backend (which holds its own
    weights) must be the one the backend model was exported from, as its
    export report shows; anything else is refused rather than ignored.

    Args:
        config (str): Config file, or the name of a shipped config
            (:func:`find_config`). Defaults to 'fc_davis.py'.
        checkpoint (str, optional): Weights (:func:`apply_checkpoint`).
        cfg_options (dict, optional): Overrides, as ``--cfg-options``.
        backend (str, optional): See :func:`apply_backend`.
        backend_model (str, optional): See :func:`apply_backend`.
        kind (str): 'mask', 'parts' or 'keypoints'. Defaults to 'mask'.
        num_classes (int, optional): Part classes, background included.
        precision (str, optional): 'fp32', 'bf16' or 'fp16' (see
            :class:`SFCTracker`); None keeps the config's (fp32 unless it
            says otherwise).
    """
    cfg = load_config(config, cfg_options)
    model = cfg.get('model')
    if not isinstance(model, dict) or model.get('type') != 'SFCTracker':
        raise ValueError(f'Config "{os.fspath(config)}" does not define an '
                         'SFCTracker model: it is not a tracking config')
    # Overrides can put anything anywhere (model.propagator=None): the parts
    # the tracker builds from are named before they are built.
    for part, optional in (('encoder', False), ('propagator', False),
                           ('label_codec', True), ('backend', True)):
        value = model.get(part)
        if value is None and optional:
            continue
        if not isinstance(value, dict) or not isinstance(
                value.get('type'), str):
            raise ValueError(
                f'Config "{os.fspath(config)}": model.{part} must be a dict '
                f'with a type (e.g. dict(type=...)), got {value!r}')
    if checkpoint is not None:
        apply_checkpoint(cfg, checkpoint, allow_load_from=False)
    apply_backend(cfg, backend, backend_model)
    if precision is not None:
        cfg.model.precision = precision
    check_backend_checkpoint(cfg, checkpoint)
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
    if device is not None and not str(device).strip():
        raise ValueError(f'Device "{device}" is empty: give cpu, cuda or '
                         'cuda:N (or none, for the default)')
    device = device or default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f'Device "{device}" is not a device (cpu, cuda, '
                         f'cuda:1, ...): {err}') from None
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f'Device "{device}" asked for, but CUDA is '
                               'not available here (use --device cpu)')
        if (parsed.index or 0) >= torch.cuda.device_count():
            raise ValueError(f'Device "{device}" asked for, but only '
                             f'{torch.cuda.device_count()} CUDA devices '
                             'exist here')
    elif parsed.type != 'cpu':
        raise ValueError(f'Device "{device}": sfc_plugin runs on cpu or '
                         'cuda')
    elif parsed.index not in (None, 0):
        # torch accepts any index on the CPU and ignores it.
        raise ValueError(f'Device "{device}": the CPU is one device (use '
                         'cpu)')
    register_all_modules()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_from_config(MODELS, cfg.model)
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
        lower_thread_priority()
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
    anchor: bool = False  #: Its labels were given (an anchor frame).


class ReadAhead(NamedTuple):
    """A video whose frame 0 was read and checked before the run
    (:func:`track_video` does so before its output opens), handed to
    :func:`inference_video` so that no frame is decoded twice."""
    first: dict  #: Frame 0 from :func:`first_frame_inputs`.
    rest: Iterator[dict]  #: The reader's iterator, past frame 0.


class _FrameInFlight(NamedTuple):
    """A frame whose work is queued, its prediction on its way to the host.
    """
    packed: dict
    sample: object
    pred: HostCopy

    def finished(self) -> TrackedFrame:
        return TrackedFrame(
            name=self.sample.frame_name,
            image=self.packed['inputs'].permute(1, 2, 0).numpy(),
            pred=self.pred.wait().numpy(),
            anchor=bool(self.sample.metainfo.get('anchor', False)))


def inference_video(model,
                    reader: VideoReader,
                    first_labels: str,
                    kind: str = 'mask',
                    num_classes: Optional[int] = None,
                    prefetch: int = 4,
                    anchors: Optional[AnchorsArg] = None,
                    complete_anchors: bool = False,
                    frames_in_flight: Optional[int] = None,
                    read_ahead: Optional[ReadAhead] = None
                    ) -> Iterator[TrackedFrame]:
    """Streams a video through a tracker, frame 0's labels propagated.

    Frames are decoded and packed ``prefetch`` frames ahead in a background
    thread; each goes through ``model.test_step``, as in mmengine's test
    loop. Frame 0's prediction is its given labels, and so is an anchor
    frame's (:meth:`SFCTracker.anchor`).

    On a GPU a frame is yielded only once ``frames_in_flight`` later frames
    have been queued: its prediction comes back to the host while the
    device works on them (:class:`HostCopy`), and frames go to the device
    from pinned memory, so the host never waits for the device except for
    the frame it hands out. Frames are yielded in order whatever the
    setting, with the same predictions; if a frame fails, the frames
    before it are yielded first, then the error is raised.

    Args:
        model (SFCTracker): From :func:`init_tracker`, with the codec that
            fits ``kind``.
        reader (VideoReader): :func:`open_video`'s frame source.
        first_labels (str): Frame 0's mask or part map PNG, or keypoint
            JSON.
        kind (str): 'mask', 'parts' or 'keypoints'. Defaults to 'mask'.
        num_classes (int, optional): Part classes, for 'parts'.
        prefetch (int): Frames decoded ahead. Defaults to 4.
        anchors (str | PathLike | Mapping, optional): Labels given for
            later frames: a folder of label files named after frames, or a
            mapping from frame index or name to label files (see
            :func:`resolve_anchors`); all checked before the first frame.
        complete_anchors (bool): Anchors hold every object still in the
            video: objects absent from one end there (object masks).
            Defaults to False.
        frames_in_flight (int, optional): Frames queued ahead of the one
            yielded, >= 0 (0: each frame is finished before the next one
            starts). Defaults to 1 on a CUDA device, 0 elsewhere (where a
            frame's work is done by the time the call returns).
        read_ahead (ReadAhead, optional): Frame 0 already read from
            ``reader`` with the iterator past it, which is continued
            (frame 0 from :func:`first_frame_inputs` with these
            ``first_labels``); without it the reader is read from its start.

    Yields:
        TrackedFrame: name, image, prediction of each frame in order.
    """
    device = model.data_preprocessor.device
    if frames_in_flight is None:
        frames_in_flight = 1 if device.type == 'cuda' else 0
    frames_in_flight = check_integer('inference_video', 'frames_in_flight',
                                     frames_in_flight)
    if frames_in_flight < 0:
        raise ValueError('inference_video: frames_in_flight must be >= 0, '
                         f'got {frames_in_flight}')
    first_labels = os.fspath(first_labels)
    pipeline = tracking_pipeline(kind, num_classes)
    source = getattr(reader, 'path', reader.name)
    anchors = resolve_anchors(anchors, reader, source, kind,
                              label_loader(kind, num_classes),
                              complete_anchors)

    def packed(item: dict) -> dict:
        if read_ahead is not None and item is read_ahead.first:
            packed = dict(item)  # pinned below, the caller's left as it is
        elif item['frame_id'] == 0:
            packed = first_frame_inputs(reader, item, first_labels, kind,
                                        pipeline)
        else:
            index = item['frame_id']
            item = _with_video_info(reader, item)
            if index in anchors:
                item.update({_LABEL_PATH_KEYS[kind]: anchors[index].labels,
                             'anchor': True,
                             'anchor_complete': anchors[index].complete})
            packed = pipeline(item)
        packed['inputs'] = pinned_for(packed['inputs'], device)
        return packed

    pred_key = model.codec.pred_key
    queued = deque()
    try:
        items = reader if read_ahead is None else itertools.chain(
            [read_ahead.first], read_ahead.rest)
        for frame in _prefetched(map(packed, items), prefetch):
            with model.results_on_device():
                sample = model.test_step(pseudo_collate([frame]))[0]
            queued.append(
                _FrameInFlight(frame, sample, HostCopy(sample.get(pred_key))))
            while len(queued) > frames_in_flight:
                yield queued.popleft().finished()
    except GeneratorExit:
        raise  # the consumer stopped: nothing more to hand out
    except BaseException:
        # A frame that cannot be read or tracked: the frames before it are
        # handed out first, as without frames in flight (a consumer that
        # wanted only those, like track_video's max_frames, never sees it).
        while queued:
            yield queued.popleft().finished()
        raise
    while queued:
        yield queued.popleft().finished()


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Within it, cuDNN picks each convolution's algorithm by timing the
    candidates (``torch.backends.cudnn.benchmark``) if ``enabled``; the
    setting is restored after.

    A config's ``env_cfg.cudnn_benchmark`` is what mmengine's Runner applies
    for the same config (``tools/test.py``); :func:`track_video` applies it
    around its run. A video's frames all have one size, so each
    convolution is timed once, on the first frame.
    """
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def cudnn_benchmark_setting(cfg) -> bool:
    """The config's ``env_cfg.cudnn_benchmark`` (False when unset), with
    ``env_cfg`` checked as before a Runner (:func:`check_env_cfg`).

    Raises:
        ValueError: A setting of ``env_cfg`` is of the wrong kind.
    """
    return bool(check_env_cfg(cfg).get('cudnn_benchmark', False))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def weights_record(cfg: Config) -> dict:
    """Which weights a tracker config runs with, for ``summary.json``.

    Returns:
        dict: With a deployed backend, ``{'backend_model': {path, sha256}}``
        (the model holds its weights; ``exported_from`` is added by
        :func:`track_video` when a checkpoint was verified against it).
        Otherwise, for each network of the encoder (its config key, e.g.
        ``model.encoder.fine_grained``), ``{path, sha256}`` of its
        checkpoint or ``'random init'``.
    """
    backend = cfg.model.get('backend') or {}
    if backend.get('type') in DEPLOYED_BACKENDS:
        model = backend.get('model') or backend.get('engine')
        return dict(backend_model=dict(path=osp.abspath(model),
                                       sha256=sha256(model)))
    record = {}

    def visit(node, key: str) -> None:
        if not isinstance(node, dict):
            return
        if 'checkpoint' in node and 'backbone' in node:
            path = node.get('checkpoint')
            if path is not None and not osp.isfile(path):
                raise FileNotFoundError(f'Checkpoint file not found: '
                                        f'"{path}" ({key}.checkpoint)')
            record[key] = 'random init' if path is None else dict(
                path=osp.abspath(path), sha256=sha256(path))
        for name, child in node.items():
            visit(child, f'{key}.{name}')

    visit(cfg.model.get('encoder'), 'model.encoder')
    return record


def _checked_max_frames(max_frames) -> Optional[int]:
    if max_frames is None:
        return None
    return check_integer('track_video', 'max_frames', max_frames, low=1,
                         why=' (or None for all frames)')


def _label_count(kind: str, packed: dict, num_classes: Optional[int]) -> int:
    """Objects (masks), classes (part maps) or keypoints of frame 0."""
    sample = packed['data_samples']
    if kind == 'keypoints':
        return int(sample.gt_joints.shape[0])
    if kind == 'parts':
        return int(num_classes)
    return int(torch.unique(sample.gt_seg_map).ne(0).sum())


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
                max_frames: Optional[int] = None,
                allow_truncated: bool = False,
                anchors: Optional[AnchorsArg] = None,
                complete_anchors: bool = False,
                precision: Optional[str] = None) -> dict:
    """Tracks a video from its first frame's labels; writes the results.

    Everything that can be checked before the work starts is: the output
    folder (never an input, inside one or holding one; new or empty, or a
    previous result with ``overwrite``), the frame source (readable, no
    gaps, one frame size), the labels (readable, lossless, the frames'
    size, at least one object), the anchors (each naming a later frame of
    the source, labels as checked as frame 0's), the config, checkpoint
    and backend.
    Results are written as :class:`TrackingResultsWriter` describes, ending
    with ``summary.json``; a failed or interrupted run leaves none of them.
    The config's ``env_cfg.cudnn_benchmark`` holds during the run
    (:func:`cudnn_benchmark`), as it does under ``tools/test.py``.

    ``summary.json`` says what was done: ``source_frames`` (the source's
    frame count), ``frames`` (tracked and written), ``objects``,
    ``weights`` (checkpoints with their SHA-256, or 'random init'), and
    ``complete``: true only when every frame of the source was tracked
    (false after ``max_frames`` or an accepted truncated source, with
    ``incomplete_reason``). Its speed: ``seconds`` and
    ``frames_per_second`` from the first frame tracked to the last handed
    to the writer (after the model is built; frame 0 was read and checked
    before the output opened), ``first_frame_seconds`` until
    the first frame's labels, where the run's one-time costs fall, and
    ``frames_per_second_after_first``, the rate a longer video tends to;
    ``matching_kernel`` names what matched the features
    (:func:`~sfc_plugin.ops.matching_kernel`).

    Args:
        source (str | PathLike): Frame folder or video file.
        first_labels (str | PathLike): Frame 0's mask / part map PNG or
            keypoint JSON.
        out_dir (str | PathLike): Output folder.
        config (str | PathLike): Tracker config or shipped config name.
            Defaults to 'fc_davis.py'.
        checkpoint (str | PathLike, optional): FC (or the config's field)
            weights; random initialisation without one. With a deployed
            backend it must be the checkpoint the model was exported from.
        cfg_options (dict, optional): Config overrides.
        backend (str, optional): 'torch', 'onnxruntime' or 'tensorrt'.
        backend_model (str | PathLike, optional): ONNX file or TensorRT
            engine.
        device (str, optional): Defaults to CUDA when available.
        num_classes (int, optional): Part classes (the labels are a part
            map).
        overlay (bool): Write ``overlay.mp4``. Defaults to True.
        overwrite (bool): Replace an ``out_dir`` that holds a previous
            result. Defaults to False.
        progress (bool): Show a progress bar on stderr. Defaults to True.
        max_frames (int, optional): Stop after this many frames (>= 1).
        allow_truncated (bool): Track a video file that cannot be decoded
            to its end up to where it breaks, instead of failing.
            Defaults to False.
        anchors (str | PathLike | Mapping, optional): Labels given for
            later frames (a folder of files named after the frames, or a
            mapping from frame index or name to label files): each replaces
            the prediction at its frame and is kept as long-term memory;
            new ids are new objects (see :func:`inference_video`).
        complete_anchors (bool): Objects absent from an anchor end there.
            Defaults to False.
        precision (str, optional): 'fp32', 'bf16' or 'fp16' for the torch
            encoder and matching (see :class:`SFCTracker`); None keeps the
            config's (the paper protocol's fp32).

    Returns:
        dict: The summary, as written to ``summary.json``.
    """
    source, first_labels, out_dir = (os.fspath(p)
                                     for p in (source, first_labels, out_dir))
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)
    backend_model = None if backend_model is None else os.fspath(
        backend_model)
    max_frames = _checked_max_frames(max_frames)
    config = find_config(config)
    inputs = {
        'source': source,
        'first-frame labels': first_labels,
        'config': config,
        'checkpoint': checkpoint,
        'backend model': backend_model,
    }
    inputs.update(anchor_inputs(anchors))
    check_output_location(out_dir, inputs)
    reader = open_video(source, allow_truncated)
    kind = label_kind(first_labels, num_classes)
    if osp.exists(first_labels) and not osp.isfile(first_labels):
        # A FIFO would block the run for good.
        raise ValueError(f'First-frame labels "{first_labels}" are not a '
                         'regular file')
    # Frame 0 is read once: checked here, tracked from here on.
    frames_read = iter(reader)
    first = first_frame_inputs(reader, next(frames_read), first_labels,
                               kind, tracking_pipeline(kind, num_classes))
    anchors = resolve_anchors(
        anchors, reader, source, kind, label_loader(kind, num_classes),
        complete_anchors, num_keypoints=_label_count(kind, first, num_classes)
        if kind == 'keypoints' else None)
    cfg = tracker_config(config, checkpoint, cfg_options, backend,
                         backend_model, kind, num_classes, precision)
    benchmark = cudnn_benchmark_setting(cfg)
    weights = weights_record(cfg)
    inputs.update((f'{key} checkpoint', value['path'])
                  for key, value in weights.items()
                  if isinstance(value, dict))
    with contextlib.closing(frames_read), TrackingResultsWriter(
            out_dir, kind, overlay=overlay,
            fps=getattr(reader, 'fps', None) or 24.0,
            overwrite=overwrite, inputs=inputs) as writer, cudnn_benchmark(
                benchmark):
        model = init_tracker(cfg, device)
        device = str(next(model.parameters()).device)
        # The matching kernels are compiled on first use (a visible, one-time
        # step): before the clock and the progress bar start.
        load_native_ops()
        total = reader.num_frames
        if max_frames is not None and total:
            total = min(total, max_frames)
        bar = FrameProgressBar(total) if progress else None
        start = time.perf_counter()
        frames = inference_video(model, reader, first_labels, kind,
                                 num_classes, anchors=anchors,
                                 read_ahead=ReadAhead(first, frames_read))
        count, anchored = 0, []
        # A run's one-time costs (cuDNN's algorithm search, CUDA's lazy
        # module loading, the reduced-precision encoder copy) land on its
        # first frame: the summary also gives the rate after it.
        first_out = last_out = None
        try:
            for frame in frames:
                writer.write(frame.name, frame.image, frame.pred,
                             frame.anchor)
                last_out = time.perf_counter()
                if first_out is None:
                    first_out = last_out
                if frame.anchor:
                    anchored.append(frame.name)
                count += 1
                if bar is not None:
                    bar.update()
                if max_frames is not None and count >= max_frames:
                    break
        except BaseException:
            # Stops the prefetch thread before the reader is closed: it may
            # be decoding a frame.
            frames.close()
            if bar is not None:
                bar.abandon()  # the error's message on a line of its own
            raise
        frames.close()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        source_frames = reader.num_frames
        reasons = []
        # The reader decodes ahead of the tracker: it may have met the
        # source's end or break after max_frames stopped the run. Both are
        # said, whichever came first.
        if max_frames is not None and count == max_frames and (
                source_frames is None or source_frames > count):
            reasons.append(f'stopped after max_frames={max_frames} of '
                           f'{source_frames or "an unknown number of"} '
                           'frames')
        if reader.truncated_at is not None:
            reasons.append(
                f'only {reader.truncated_at} of the {source_frames} frames '
                'of the source could be decoded (accepted truncated source); '
                'results and anchors follow decoding order, the video\'s own '
                'only if the missing frames are its last')
        elif not reasons and reader.unverified_end is not None:
            reasons.append(reader.unverified_end)
        if checkpoint is not None and 'backend_model' in weights:
            weights['backend_model']['exported_from'] = dict(
                path=osp.abspath(checkpoint), sha256=sha256(checkpoint))
        summary = dict(
            complete=not reasons,
            source=osp.abspath(source),
            first_labels=osp.abspath(first_labels),
            label_kind=kind,
            source_frames=source_frames,
            frames=count,
            objects=_label_count(kind, first, num_classes),
            frame_size=list(reader.frame_size),
            config=osp.abspath(config),
            checkpoint=None if checkpoint is None else osp.abspath(
                checkpoint),
            weights=weights,
            backend=cfg.model.get('backend') or dict(type='torch'),
            precision=cfg.model.get('precision', 'fp32'),
            device=device,
            matching_kernel=matching_kernel(model.feature_dtype, device),
            propagator={
                k: cfg.model.propagator.get(k)
                for k in ('topk', 'radius', 'context_frames', 'temperature')
                if k in cfg.model.propagator
            },
            max_frames=max_frames,
            anchors=dict(
                given=len(anchors), used=anchored,
                complete=sorted(i for i, a in anchors.items()
                                if a.complete)),
            seconds=round(seconds, 3),
            frames_per_second=round(count / seconds, 3) if seconds else None,
            first_frame_seconds=None if first_out is None else round(
                first_out - start, 3),
            frames_per_second_after_first=round(
                (count - 1) / (last_out - first_out), 3)
            if count > 1 and last_out > first_out else None,
            peak_rss_mib=round(peak_rss_mib(), 1),
            sfc_plugin=sfc_plugin.__version__,
            torch=torch.__version__,
            finished=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        )
        if reasons:
            summary['incomplete_reason'] = '; '.join(reasons)
        if reader.truncated_at is not None:
            summary['source_truncated_at'] = reader.truncated_at
        if reader.estimated_frame_count is not None:
            summary['source_frames_estimated'] = reader.estimated_frame_count
        if device.startswith('cuda'):
            summary['peak_cuda_memory_mib'] = round(
                torch.cuda.max_memory_allocated() / 2**20, 1)
        writer.commit(summary)
    return summary


__all__ = [
    'track_video', 'init_tracker', 'inference_video', 'tracker_config',
    'tracking_pipeline', 'label_kind', 'label_loader', 'apply_checkpoint',
    'apply_backend', 'find_config', 'first_frame_inputs', 'ReadAhead',
    'TrackedFrame',
    'DEFAULT_CONFIG', 'weights_record'
]
