"""The ``affordance_grounding`` node: camera frames + action phrases -> heatmaps and contact points.

    ros2 run affordance_clip_ros grounding_node --ros-args -r image:=/camera/color/image_raw
    ros2 topic pub --once /affordance/query std_msgs/msg/String "{data: 'cut with'}"

Interface (docs/ros.md): subscribes ``image``, ``/affordance/query`` and, with
``use_depth``, ``depth`` + ``camera_info``; publishes ``~/result``, ``~/heatmap``, ``~/overlay``,
``~/contact_point``, ``~/contact_poses``, ``~/markers`` and ``/diagnostics``; serves ``~/ground``
(one-shot grounding with the request's own prompts). Every output carries the input image's
header. With parameter ``cameras``, each camera N has these inputs under ``N/`` and outputs under
``~/N/`` (``camera_stream.CameraStream``); one model and one prompt set serve them all.

Threads: the main thread runs a single-threaded executor for the subscription callbacks, the
timers, the parameter services and ~/ground; each callback only stores what arrived and returns
(~/ground's yields until its answer is in). One worker thread owns the model: it takes the newest
frame of every camera that has one (a newer frame replaces an unprocessed one of its camera, which
is counted) as one batch and runs inference once for the batch; a second thread (parameter
``pipeline``, ``pipeline.PublishStage``) then finds the 3D points and publishes, while the worker
infers the next batch (one batch at most waits for it, results keep their order); ~/ground
requests are taken in turn with the batches. (rclpy's MultiThreadedExecutor takes images late under load: see
docs/ros.md, Latency.)
"""
from __future__ import annotations

import gc
import queue
import threading
import time
import traceback

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from ..model.checkpoint import CheckpointError
from ..model.grounder import AffordanceGrounder
from ..model.weights import WeightsLoadError, WeightsNotFoundError
from ..msg import AffordanceResult
from ..srv import Ground
from . import node_parameters
from .camera_stream import CameraStream
from .compat import MessageInfo
from .conversions import ImageConversionError, image_to_numpy, numpy_to_image, rgb_from_message
from .frames import Frame, LatestSlot, ThrottledLog, stamp_ns
from .geometry import DepthError, Deprojector, depth_to_metres, peak_points, surface_normals
from .ground_service import GroundRequest, NextSpin, parse_request
from .inference import MAX_INFERENCE_SIDE, FrameMaps, predict_frames, release_free_memory
from .messages import (best_point, contact_poses, diagnostic_status, diagnostics_message, heatmap_image, marker_array,
                       point_stamped, result_message)
from .pipeline import PublishStage
from .queries import NewestQueries, join_prompts, parse_prompts

NODE_NAME = "affordance_grounding"
QUERY_TOPIC = "/affordance/query"
QUERY_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# A second query subscription for publishers with the default QoS (reliable, volatile), which the
# transient_local one cannot match; a message that reaches both is taken once.
QUERY_LIVE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
MAX_IMAGE_PIXELS = 8192 * 8192  # larger frames are refused before any copy is made
LOG_PERIOD_S = 5.0
# Colour and depth of one capture arrive on two topics in either order: while depth is streaming,
# wait this long at most for the depth image of a colour frame that is newer than all depth held.
DEPTH_WAIT_S = 0.3
# image_qos auto: the publishers are looked at when one connects (matched event) and every
# AUTO_QOS_PERIOD_S (a reliable reader is not told of a new best-effort publisher).
AUTO_QOS_PERIOD_S = 0.5
PUBLISH_DRAIN_S = 2.0  # deactivate: the longest wait for the publishing stage to publish the frames in hand


class StartupError(RuntimeError):
    """The node cannot start; the message names the parameter and the fix."""


class GroundingNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.settings = _declare_parameters(self)
        self.add_on_set_parameters_callback(node_parameters.validate)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self.grounder: AffordanceGrounder | None = None
        self.throttled = ThrottledLog(self.get_logger(), LOG_PERIOD_S)
        self._slot = LatestSlot()
        self._markers_lock = threading.Lock()  # a frame's markers and the clear of a prompt change, in order
        self._queries = NewestQueries()
        self._worker: threading.Thread | None = None
        self._publisher: PublishStage | None = None  # with parameter pipeline: publishes while the worker infers
        # Open (active): the cameras' subscriptions and publishers and the timers exist. The worker
        # holds the lock for a whole batch, so closing waits for the frames in hand to be published.
        self._io_lock = threading.Lock()
        self._io_open = False

        # The callbacks (sensors, prompts, timers, parameter services) run one at a time on the
        # executor's thread, beside the inference worker thread. Sensor callbacks only store the
        # message (LatestSlot, DepthBuffer and FrameStats lock against the worker; the CameraInfo
        # is one reference assignment). The settings snapshot is replaced whole on a parameter
        # change; the worker reads one per batch.

        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # A waiting ~/ground coroutine holds its callback group until it returns: in a group of its
        # own, reentrant, so that the camera and the prompts (default group) and other requests go on.
        self.create_service(Ground, "~/ground", self._on_ground, callback_group=ReentrantCallbackGroup())
        self._answered = self.create_guard_condition(lambda: None)  # wakes the executor for a waiting ~/ground

        volatile_ok = SubscriptionEventCallbacks(incompatible_qos=lambda _event: None)  # the live one takes them
        self.create_subscription(String, QUERY_TOPIC, self._on_query, QUERY_QOS,
                                 event_callbacks=volatile_ok)
        self.create_subscription(String, QUERY_TOPIC, self._on_query, QUERY_LIVE_QOS)
        self._streams: dict[str, CameraStream] = {}  # camera name ("" for the single camera) -> stream
        self._timers_open: list = []  # the diagnostics timer and, with image_qos auto, the QoS matching one

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Build the model, then subscribe and publish; StartupError if the model cannot be built."""
        self.load_model()
        self.open_io()

    def load_model(self) -> None:
        """Start the worker thread and return once it has built the model; StartupError if it
        cannot. The worker builds the grounder itself, so everything the model keeps per thread
        (CUDA graphs of ``compile: reduce-overhead``) belongs to the thread that runs it."""
        built: queue.Queue[StartupError | None] = queue.Queue(maxsize=1)
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._run_worker, args=(built,), name="affordance_inference",
                                        daemon=True)
        self._worker.start()
        if (error := built.get()) is not None:
            self._worker.join()
            self._worker = None
            raise error
        pipeline = self.settings.pipeline
        if pipeline == "on" or (pipeline == "auto" and self.grounder.device.type == "cuda"):
            self._publisher = PublishStage(lambda e: self.get_logger().error(f"publishing stage: {e!r}"))

    def open_io(self) -> None:
        """Create each camera's subscriptions and publishers (parameter cameras; one unnamed camera
        when empty) and the timers: frames are processed and published."""
        for name in self.settings.cameras or ("",):
            stream = self._streams[name] = CameraStream(self, name, self.throttled)
            stream.open(self.settings, self._on_image)
        self._timers_open = [self.create_timer(1.0, self._publish_diagnostics)]
        if self.settings.image_qos == "auto":
            self._timers_open.append(self.create_timer(AUTO_QOS_PERIOD_S, self._match_publisher_qos))
        with self._io_lock:
            self._io_open = True
        s = self.settings
        topics = "; ".join(stream.describe_inputs() for stream in self._streams.values())
        self.get_logger().info(
            f"ready: CLIP {s.clip_model} ({self.grounder.mode}) on {self.grounder.device}; inputs {topics}; "
            f"prompts: {join_prompts(s.prompts) or '(none yet: publish on ' + QUERY_TOPIC + ')'}")

    def close_io(self) -> None:
        """After the frames in hand are published, destroy what :meth:`open_io` created: camera
        traffic stops reaching the process and nothing is published. The model stays."""
        with self._io_lock:
            self._io_open = False
        if self._publisher is not None:
            self._publisher.drain(PUBLISH_DRAIN_S)
        for timer in self._timers_open:
            self.destroy_timer(timer)
        self._timers_open = []
        for stream in self._streams.values():
            with stream.awaiting_lock:
                waiting, stream.awaiting = stream.awaiting, []
            for job in waiting:
                self._answer(job, False, "the node was deactivated before a camera frame came")
            stream.close()
        self._streams = {}

    def free_model(self) -> None:
        """Stop the worker and free the model, its GPU memory included."""
        self.stop()
        self._worker = None
        self.grounder = None
        gc.collect()  # the model's modules hold reference cycles
        release_free_memory()

    def _build_grounder(self) -> None:
        """Build the grounder from the (read-only) model parameters; StartupError on failure."""
        s = self.settings
        try:
            self.grounder = AffordanceGrounder.from_config(s.grounder_config())
        except (WeightsNotFoundError, WeightsLoadError, CheckpointError, FileNotFoundError, ValueError,
                TypeError, RuntimeError) as e:
            raise StartupError(_startup_message(e, s)) from e
        release_free_memory()  # what building the engine freed (export, quantisation): 100-300 MB

    def stop(self, timeout_s: float = 1.5) -> None:
        """Let the worker finish the frames in hand, then end it (and the publishing stage)."""
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout_s)
        if self._publisher is not None:
            self._publisher.close(timeout_s)
            self._publisher = None

    def destroy_node(self) -> None:
        if self._io_open:
            self.close_io()
        super().destroy_node()

    # ------------------------------------------------------------------ parameters
    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        self.settings = self.settings.updated({p.name: p.value for p in parameters})
        if any(p.name == "prompts" for p in parameters):
            self.get_logger().info(f"prompts: {join_prompts(self.settings.prompts) or '(none: idle)'}")
            if self.settings.use_depth:
                with self._markers_lock:
                    if not self.settings.prompts and self._io_open:
                        for stream in self._streams.values():
                            self._clear_markers(stream)

    def _clear_markers(self, stream: CameraStream) -> None:
        """Going idle: remove the last frame's markers from RViz, and tell planners that no contact
        pose stands, rather than leave the last ones as if current."""
        header = Header(frame_id=stream.marker_frame, stamp=self.get_clock().now().to_msg())
        stream.pub["markers"].publish(marker_array(header, [], []))
        stream.pub["contact_poses"].publish(contact_poses(header, [], []))

    # ------------------------------------------------------------------ inputs (executor thread)
    def _on_query(self, msg: String, info: MessageInfo) -> None:
        if not self._queries.take(info):  # already taken through the other query subscription, or older
            return
        parsed = parse_prompts(msg.data)
        for note in parsed.notes:
            self.get_logger().warning(f"{QUERY_TOPIC}: {note}")
        if not parsed.prompts:
            self.throttled.warning("empty query",
                           f"ignored an empty query on {QUERY_TOPIC}; prompts stay "
                           f"'{join_prompts(self.settings.prompts)}' (set parameter prompts to '' to stop)")
            return
        self.set_parameters([Parameter("prompts", value=join_prompts(parsed.prompts))])

    def _on_image(self, stream: CameraStream, msg: Image | CompressedImage) -> None:
        stream.stats.count("received")
        if stream.awaiting:
            self._hand_frame_to_requests(stream, msg)
        if not self.settings.prompts or not stream.has_listeners():
            stream.stats.count("idle")
            if self.settings.use_depth:  # nothing is paired while idle: depth too old for this frame goes
                stream.depth.forget_before(stamp_ns(msg.header.stamp) - int(self.settings.max_depth_age * 1e9))
            why = "no prompts" if not self.settings.prompts else "nobody subscribes to the outputs"
            self.throttled.info(f"idle {stream.name}",
                           f"frames on {stream.image_topic} are not processed: {why} (publish on {QUERY_TOPIC} or "
                           "set parameter prompts)")
            return
        if self._slot.put(Frame(msg, time.monotonic(), stream.name)):
            stream.stats.count("replaced")

    async def _on_ground(self, request: Ground.Request, response: Ground.Response) -> Ground.Response:
        """~/ground: check the request, queue it (or wait for the camera's next frame), then yield to
        the executor until the worker answers or the timeout passes."""
        try:
            if not self._io_open:
                raise ValueError("the node is not active: activate it first (lifecycle transition activate)")
            job = parse_request(request, self.settings.ground_timeout_s, self.settings.cameras)
        except ValueError as e:
            response.success, response.message = False, str(e)
            self.get_logger().warning(f"~/ground refused: {e}")
            return response
        stream = self._streams[job.camera]
        if job.from_camera:
            with stream.awaiting_lock:
                stream.awaiting.append(job)
        else:
            self._slot.put_request(job)
        while not job.done.is_set():
            if time.monotonic() >= job.deadline:
                job.expire(stream.image_topic)
                break
            await NextSpin()
        with stream.awaiting_lock:
            if job in stream.awaiting:
                stream.awaiting.remove(job)
        return job.response

    def _hand_frame_to_requests(self, stream: CameraStream, msg) -> None:
        with stream.awaiting_lock:
            waiting, stream.awaiting = stream.awaiting, []
        for job in waiting:
            if job.give_frame(msg):
                self._slot.put_request(job)

    # ------------------------------------------------------------------ inference (worker thread)
    def _run_worker(self, built: "queue.Queue[StartupError | None]") -> None:
        try:
            self._build_grounder()
        except StartupError as e:
            built.put(e)
            return
        except BaseException as e:  # anything else must not leave start() waiting for ever
            built.put(StartupError(f"building the model failed: {type(e).__name__}: {e}"))
            self.get_logger().error(traceback.format_exc())
            return
        built.put(None)
        next_start = 0.0
        while (item := self._slot.take(frames_from=next_start)) is not None:
            with self._io_lock:
                if not self._io_open:
                    if isinstance(item, GroundRequest):
                        self._answer(item, False, "the node was deactivated")
                    continue
                if isinstance(item, GroundRequest):
                    self._serve(item)
                    continue
                self._process_safely(item)
            rate = self.settings.max_rate_hz
            next_start = max(next_start + 1.0 / rate, time.monotonic()) if rate > 0 else 0.0

    def _process_safely(self, batch: list[Frame]) -> None:
        """Process one batch; an error is counted and logged, never raised."""
        try:
            self._process(batch)
        except Exception as e:  # one bad batch must never stop the node
            self._batch_failed([self._streams[frame.camera] for frame in batch], "inference", e)

    def _batch_failed(self, streams: list[CameraStream], stage: str, error: Exception) -> None:
        """Count and log a batch that failed in ``stage``; the node goes on."""
        if not self.context.ok():
            return  # shutting down: publishers are gone
        for stream in streams:
            stream.stats.count("failed")
        self.throttled.error("failed", f"frame(s) skipped, {stage} failed: {type(error).__name__}: {error}")
        self.get_logger().debug(traceback.format_exc())

    def _process(self, batch: list[Frame]) -> None:
        """The newest frame of each waiting camera, through the model in one batch; then, on the
        publishing stage (with parameter pipeline) or here, published on each camera's outputs."""
        s, ready = self.settings, []
        for frame in batch:
            stream = self._streams[frame.camera]
            try:
                ready.append((frame, stream, rgb_from_message(frame.msg, MAX_IMAGE_PIXELS)))
            except ImageConversionError as e:
                stream.stats.count("rejected")
                self.throttled.warning(f"rejected {stream.name}", f"image rejected: {e} ({stream.image_topic})")
        if not s.prompts or not ready:  # prompts cleared while the frames waited
            return
        depths = [self._paired_depth(stream, frame.msg, s) if s.use_depth else None for frame, stream, _ in ready]
        outputs, inference_ms = self._infer([rgb for _, _, rgb in ready], [stream for _, stream, _ in ready],
                                            s.prompts, s)
        if self._publisher is not None:
            self._publisher.submit(lambda: self._publish_in_stage(ready, depths, outputs, inference_ms, s))
        else:
            self._publish_batch(ready, depths, outputs, inference_ms, s)

    def _publish_in_stage(self, *batch) -> None:
        """:meth:`_publish_batch` on the publishing stage: a failure is counted, as in the worker."""
        try:
            self._publish_batch(*batch)
        except Exception as e:  # one bad batch must never stop the stage
            self._batch_failed([stream for _, stream, _ in batch[0]], "publishing", e)

    def _publish_batch(self, ready: list, depths: list, outputs: list, inference_ms: float,
                       s: node_parameters.Settings) -> None:
        """3D points, messages and publishing of an inferred batch (the publishing stage, or the worker)."""
        for (frame, stream, rgb), depth, maps in zip(ready, depths, outputs):
            predictions, points, normals = maps.predictions, [], []
            if s.use_depth:
                try:
                    points, normals = self._camera_points(stream, frame.msg, depth, rgb.shape[:2], predictions, s)
                except (DepthError, ImageConversionError) as e:
                    stream.stats.count("no_depth")
                    self.throttled.warning(f"no 3D {stream.name}", f"no 3D contact points for this frame: {e} "
                                           f"({stream.image_topic})")
            points += [None] * (len(predictions) - len(points))
            header = frame.msg.header
            self._publish(stream, header, rgb, maps, points, normals, inference_ms, s)
            age_ns = self.get_clock().now().nanoseconds - stamp_ns(header.stamp)
            stream.stats.processed(age_ns / 1e6 if stamp_ns(header.stamp) > 0 and age_ns >= 0 else None,
                                   inference_ms)

    def _infer(self, rgbs: list, streams: list[CameraStream], prompts, s: node_parameters.Settings
               ) -> tuple[list[FrameMaps], float]:
        """Images of ``streams`` in one batch -> (for each, its maps at its resolution, still on the
        model's device; milliseconds of the batch)."""
        self.grounder.update_settings(**s.peak_settings())
        start = time.perf_counter()
        outputs = predict_frames(self.grounder, rgbs, prompts)
        inference_ms = (time.perf_counter() - start) * 1e3
        for rgb, stream, maps in zip(rgbs, streams, outputs):
            if maps.downscaled:
                stream.stats.count("downscaled")
                self.throttled.warning("downscaled", f"{rgb.shape[1]}x{rgb.shape[0]} frame on {stream.image_topic} "
                                       f"downscaled to {MAX_INFERENCE_SIDE} px for inference")
                release_free_memory()
        return outputs, inference_ms

    def _serve(self, job: GroundRequest) -> None:
        """Answer one ~/ground request with one inference (worker thread)."""
        if not job.start():
            return  # timed out while queued
        s, stream = self.settings, self._streams[job.camera]
        try:
            rgb = rgb_from_message(job.image, MAX_IMAGE_PIXELS)
        except ImageConversionError as e:
            self._answer(job, False, f"image: {e}")
            return
        depth = self._paired_depth(stream, job.image, s) if job.from_camera and s.use_depth else None
        try:
            [maps], inference_ms = self._infer([rgb], [stream], job.prompts, s)
        except Exception as e:  # a request must not stop the worker
            self._answer(job, False, f"inference failed: {type(e).__name__}: {e}")
            return
        predictions, points, normals, note = maps.predictions, [], [], ""
        try:
            if depth is not None:
                points, normals = self._camera_points(stream, job.image, depth, rgb.shape[:2], predictions, s)
            elif job.depth is not None:
                info = job.camera_info or stream.camera_info
                if info is None:
                    raise DepthError("no camera_info in the request and none received on "
                                     f"{stream.topic('camera_info')}")
                points, normals = self._surface_points(job.depth, info, rgb.shape[:2], predictions, s)
        except (DepthError, ImageConversionError) as e:
            if not job.from_camera:  # the request's own depth or intrinsics are wrong
                self._answer(job, False, f"depth: {e}")
                return
            note = f"no 3D contact points: {e}"
        points += [None] * (len(predictions) - len(points))
        result = self._result(job.image.header, maps, points, normals, inference_ms, s)
        self._answer(job, True, note, result)

    def _answer(self, job: GroundRequest, success: bool, message: str, result=None) -> None:
        job.finish(success, message, result)
        self._answered.trigger()
        if not success:
            self.get_logger().warning(f"~/ground failed: {message}")

    @staticmethod
    def _paired_depth(stream: CameraStream, msg: Image, s: node_parameters.Settings
                      ) -> tuple[bool, Image | None, CameraInfo | None]:
        """Before inference: (paired, depth image, CameraInfo) of this frame. Its depth image is
        taken now when it is in, so the depth images that arrive while the model runs cannot push
        it out; one still to come is waited for after inference (paired False), while the model runs."""
        paired, depth_msg = stream.depth.nearest_if_final(stamp_ns(msg.header.stamp), s.max_depth_age)
        return paired, depth_msg, stream.camera_info

    def _camera_points(self, stream: CameraStream, msg: Image, depth: tuple[bool, Image | None, CameraInfo | None],
                       shape, predictions, s: node_parameters.Settings) -> tuple[list, list]:
        """3D points and normals per prompt and peak of a camera frame; DepthError when it has none."""
        paired, depth_msg, info = depth
        if not paired:
            depth_msg = stream.depth.nearest(stamp_ns(msg.header.stamp), s.max_depth_age, wait_s=DEPTH_WAIT_S)
        if info is None:
            raise DepthError(f"no CameraInfo received on {stream.topic('camera_info')} yet")
        if depth_msg is None:
            raise DepthError(f"no depth image within max_depth_age={s.max_depth_age} s of the image stamp")
        self._warn_other_frame(msg, depth_msg, info)
        return self._surface_points(depth_msg, info, shape, predictions, s)

    @staticmethod
    def _surface_points(depth_msg: Image, info: CameraInfo, shape, predictions,
                        s: node_parameters.Settings) -> tuple[list, list]:
        """(points, normals) per prompt and peak from a depth image and its intrinsics; DepthError
        when they do not fit the image or no peak has a valid depth."""
        depth_m = depth_to_metres(image_to_numpy(depth_msg), depth_msg.encoding)
        pixels = [[(p.u, p.v) for p in pred.peaks] for pred in predictions]
        points = peak_points(pixels, depth_m, info, shape, s.depth_window)
        intrinsics = Deprojector(info).intrinsics
        normals = [surface_normals(px, depth_m, intrinsics, s.normal_window) for px in pixels]
        return points, normals

    def _warn_other_frame(self, msg: Image, depth_msg: Image, info: CameraInfo) -> None:
        """Depth or CameraInfo of another camera frame: the points would be wrong, so say so."""
        image_frame = msg.header.frame_id
        others = {name: frame for name, frame in (("depth", depth_msg.header.frame_id),
                                                  ("camera_info", info.header.frame_id))
                  if frame and image_frame and frame != image_frame}
        if others:
            listed = ", ".join(f"{name} is in '{frame}'" for name, frame in others.items())
            self.throttled.warning("other frame", f"{listed} but the image is in '{image_frame}': depth and "
                                   "CameraInfo must be registered to the colour image (aligned depth)")

    def _result(self, header, maps: FrameMaps, points, normals, inference_ms: float,
                s: node_parameters.Settings) -> AffordanceResult:
        """The AffordanceResult of one image, its maps as parameters result_max_side and
        result_encoding ask (made on the model's device, then copied)."""
        arrays, scale = maps.result_maps(s.result_max_side, s.result_encoding)
        images = [heatmap_image(array, header) for array in arrays]
        return result_message(header, maps.predictions, points, inference_ms, images, normals, scale)

    def _publish(self, stream: CameraStream, header, rgb, maps: FrameMaps, points, normals, inference_ms: float,
                 s: node_parameters.Settings) -> None:
        """Every output of one frame; ~/heatmap and ~/overlay only while someone subscribes."""
        pub, predictions = stream.pub, maps.predictions
        result = self._result(header, maps, points, normals, inference_ms, s)
        pub["result"].publish(result)
        if pub["heatmap"].get_subscription_count():
            full = result.maps[0].heatmap if result.maps[0].scale == 1.0 and s.result_encoding == "32FC1" else None
            pub["heatmap"].publish(full if full is not None else heatmap_image(maps.heatmap(0), header))
        if s.publish_overlay and pub["overlay"].get_subscription_count():
            pub["overlay"].publish(numpy_to_image(maps.overlay(rgb, s.overlay_alpha), "bgr8", header))
        if s.use_depth:
            markers = marker_array(header, predictions, points, normals)
            poses = contact_poses(header, points, normals)
            with self._markers_lock:  # never after the DELETEALL and empty poses of a prompt clear
                if self.settings.prompts:
                    pub["markers"].publish(markers)
                    pub["contact_poses"].publish(poses)
                    stream.marker_frame = header.frame_id
            if (best := best_point(points)) is not None:
                pub["contact_point"].publish(point_stamped(header, best))

    # ------------------------------------------------------------------ timers
    def _match_publisher_qos(self) -> None:
        for stream in self._streams.values():
            stream.match_publisher_qos()

    def _publish_diagnostics(self) -> None:
        """One DiagnosticStatus per camera, named after the node (and the camera, with cameras)."""
        statuses = [self._camera_status(stream) for stream in self._streams.values()]
        self._pub_diagnostics.publish(diagnostics_message(self.get_clock().now().to_msg(), statuses))

    def _camera_status(self, stream: CameraStream) -> DiagnosticStatus:
        snap, s = stream.stats.snapshot(), self.settings
        level, message = DiagnosticStatus.OK, self._status_line(snap, s)
        if problems := stream.problems_since_last(snap, s):
            level, message = DiagnosticStatus.WARN, f"{message}; {'; '.join(problems)} (see the node's log)"
        if self._worker is not None and not self._worker.is_alive():
            level, message = DiagnosticStatus.ERROR, "inference worker stopped: see the node's log"
        values = dict(
            processed_fps=snap["fps"], latency_mean_ms=snap["latency_mean_ms"],
            latency_p95_ms=snap["latency_p95_ms"], inference_mean_ms=snap["inference_mean_ms"],
            frames_received=snap["received"], frames_processed=snap["processed"], frames_replaced=snap["replaced"],
            frames_rejected=snap["rejected"], frames_failed=snap["failed"], frames_downscaled=snap["downscaled"],
            frames_without_3d=snap["no_depth"], frames_idle=snap["idle"], frames_lost=snap["lost"],
            device=str(self.grounder.device) if self.grounder else "-",
            model_mode=self.grounder.mode if self.grounder else "-", clip_model=s.clip_model,
            backend=getattr(self.grounder, "backend", s.backend),
            prompts=join_prompts(s.prompts),
            text_cache_entries=self.grounder.clip.text_cache_len if self.grounder else 0,
            transport_loss=f"{stream.transport_loss():.3f}", image_qos=stream.input_qos())
        if stream.name:
            values.update(camera=stream.name, image_topic=stream.image_topic)
        name = self.get_fully_qualified_name() + (f"/{stream.name}" if stream.name else "")
        return diagnostic_status(f"{name}: affordance grounding", values["device"], level, message, values)

    @staticmethod
    def _status_line(snap: dict, s: node_parameters.Settings) -> str:
        if not s.prompts:
            return f"idle: no prompts (publish on {QUERY_TOPIC})"
        if snap["fps"] == 0:
            return "waiting for images"
        return f"{snap['fps']:.1f} fps, latency p95 {snap['latency_p95_ms']:.0f} ms"


def _declare_parameters(node: Node) -> node_parameters.Settings:
    try:
        node_parameters.declare(node)
    except ParameterException as e:
        raise StartupError(f"invalid parameter: {e}") from e
    settings = node_parameters.read_settings(node)
    refused = node_parameters.validate([Parameter(name, value=value)
                                        for name, value in node_parameters.values(node).items()])
    if not refused.successful:
        raise StartupError(f"invalid parameter: {refused.reason}")
    return settings


_FIXES = {
    "clip_pretrained": "pass a local weights file, as a launch argument (ros2 launch affordance_clip_ros "
                       "grounding.launch.py clip_pretrained:=/path/open_clip_model.safetensors) or a node parameter "
                       "(--ros-args -p clip_pretrained:=/path/open_clip_model.safetensors), or copy the file into the "
                       "Hugging Face cache (docs/install.md, 'CLIP weights'); 'none' gives random weights for tests "
                       "only",
    "fpn_checkpoint": "pass a checkpoint written by `affordance-clip train`, or leave fpn_checkpoint empty for the "
                      "training-free head",
    "clip_model": "use an open_clip ResNet CLIP such as RN101 (the paper's) or RN50",
    "device": "use device:=auto or device:=cpu",
}


def _startup_message(error: Exception, s: node_parameters.Settings) -> str:
    text = str(error)
    if isinstance(error, (WeightsNotFoundError, WeightsLoadError)) or "pretrained" in text:
        name = "clip_pretrained"
    elif isinstance(error, CheckpointError) or (isinstance(error, FileNotFoundError) and s.fpn_checkpoint):
        name = "fpn_checkpoint"
    elif "CLIP model" in text:
        name = "clip_model"
    elif "device" in text or "CUDA" in text:
        name = "device"
    elif "backend" in text or "precision" in text:
        return (f"cannot start: parameters precision='{s.precision}', backend='{s.backend}': {text}\n"
                f"Fix: use precision:=auto and backend:=auto, or a pair the message allows.")
    else:
        return f"cannot start: {type(error).__name__}: {text}"
    return f"cannot start: parameter {name}='{getattr(s, name)}': {text}\nFix: {_FIXES[name]}."
