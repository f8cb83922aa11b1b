"""ExperimentConfig: every key of TAO's SegFormer spec (TAO Core 7.3), with its default and metadata, plus ours.

Key names, defaults and bounds follow nvidia_tao_core/config/segformer/default_config.py (where TAO's
dataclass value and its schema default differ, the schema default is used: batch_size 8, workers 1).
Our additions are marked "(segformer_tao)" in their description.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from segformer_tao.config.fields import group, spec

MIT_BACKBONES = [f"mit_b{i}" for i in range(6)]
FAN_BACKBONES = ["fan_tiny_8_p4_hybrid", "fan_small_12_p4_hybrid", "fan_base_16_p4_hybrid", "fan_large_16_p4_hybrid"]
# TAO 7's ViT backbones (NV-DINOv2, DINOv3, NVCLIP), built in a ViT-Adapter (model/backbones/vit_adapter.py).
TAO_VIT_BACKBONES = [
    "vit_large_nvdinov2", "vit_giant_nvdinov2", "vit_small_dinov3", "vit_small_plus_dinov3", "vit_base_dinov3",
    "vit_large_dinov3", "vit_huge_plus_dinov3", "vit_base_nvclip_16_siglip", "vit_huge_nvclip_14_siglip",
]
# The four C-RADIO ViT-Adapters TAO's SegFormer builder accepts (model/backbones/radio.py).
TAO_RADIO_BACKBONES = [
    "c_radio_v2_vit_base_patch16_224", "c_radio_v2_vit_large_patch16_224", "c_radio_v2_vit_huge_patch16_224",
    "c_radio_v3_vit_large_patch16_reg4_dinov2",
]
ACTIONS = ["train", "evaluate", "inference", "export", "quantize", "gen_trt_engine"]
# Keys that must be set before an action starts (TAO's data sources + the model the action needs); each inner
# list is "one of these".
REQUIRED_KEYS = {
    "train": [["dataset.segment.root_dir"]],
    "evaluate": [["dataset.segment.root_dir"], ["evaluate.checkpoint", "evaluate.onnx_file", "evaluate.trt_engine"]],
    "inference": [["inference.source", "dataset.segment.root_dir"],
                  ["inference.checkpoint", "inference.onnx_file", "inference.trt_engine"]],
    "export": [["dataset.segment.root_dir"], ["export.checkpoint"]],
    "quantize": [["dataset.segment.root_dir"], ["dataset.segment.quant_calibration_dataset.images_dir"],
                 ["quantize.model_path"]],
    "gen_trt_engine": [["gen_trt_engine.onnx_file"]],
}
# Top-level sections in each action's schema and template.
COMMON_SECTIONS = ["model_name", "encryption_key", "encryption_strict", "results_dir", "parent_job", "wandb", "model",
                   "dataset"]
ACTION_SECTIONS = {
    "train": COMMON_SECTIONS + ["mlflow", "train", "automl_policy", "automl"],
    "evaluate": COMMON_SECTIONS + ["evaluate"],
    "inference": COMMON_SECTIONS + ["inference"],
    "export": COMMON_SECTIONS + ["export"],
    "quantize": COMMON_SECTIONS + ["quantize", "evaluate"],
    "gen_trt_engine": COMMON_SECTIONS + ["gen_trt_engine"],
}
RESULTS_DIR_DOC = "Path to where all the assets generated from this action are stored (default <results_dir>/<action>)."


# ----------------------------------------------------------------------------------------------- common
@dataclass
class WandBConfig:
    enable: bool = spec(True, "Log training to Weights & Biases (losses, lr, val_miou, the config without secrets, "
                        "the final checkpoints' paths). Needs the `wandb` package ([wandb] extra) and credentials "
                        "(WANDB_API_KEY or `wandb login`) or WANDB_MODE=offline (run kept under <results_dir>/wandb); "
                        "otherwise one note and training goes on.")
    project: str = spec("TAO Toolkit", "W&B project name.")
    entity: str | None = spec("", "W&B entity (team or user); empty = your default entity.")
    group: str | None = spec("", "W&B group; empty = none (AutoML trials are grouped by their study).")
    tags: list[str] = spec(["tao-toolkit"], "W&B tags.", automl_enabled=False)
    reinit: bool = spec(False, "Finish a W&B run still open in this process before starting this one.")
    sync_tensorboard: bool = spec(False, "Sync TensorBoard logs to W&B (with train.tensorboard.enabled=true).")
    save_code: bool = spec(False, "Save the main script's code to W&B.")
    name: str = spec("TAO Toolkit Training", "W&B run name (AutoML appends ' trial <n>').")
    run_id: str = spec("", "W&B run id to resume (continue logging into that run); empty = a new run.")


@dataclass
class MLflowConfig:
    enable: bool = spec(False, "(segformer_tao) Log training to MLflow (losses, lr, val_miou, the config without "
                        "secrets, the final checkpoints' paths); needs the [mlflow] extra, else one note.")
    tracking_uri: str | None = spec(None, "(segformer_tao) MLflow tracking URI (http://server:5000, "
                                    "sqlite:///path.db, databricks); unset = MLFLOW_TRACKING_URI, else "
                                    "sqlite:///<results_dir>/mlflow.db (AutoML: the search's results dir).")
    experiment_name: str = spec("segformer_tao", "(segformer_tao) MLflow experiment (created when missing).")
    run_name: str | None = spec(None, "(segformer_tao) MLflow run name; unset = MLflow's generated name "
                                "(AutoML: trial_<n>).")
    tags: dict[str, str] = spec({}, "(segformer_tao) Tags set on the MLflow run.", automl_enabled=False)


# ------------------------------------------------------------------------------------------------ model
@dataclass
class BackboneConfig:
    type: str = spec(
        "fan_small_12_p4_hybrid", "Backbone architecture.",
        valid_options=MIT_BACKBONES + FAN_BACKBONES + TAO_VIT_BACKBONES + TAO_RADIO_BACKBONES, popular=True,
    )
    feat_downsample: bool = spec(False, "Feature downsample for the FAN base backbone.")
    pretrained_backbone_path: str | None = spec(
        None, "Pretrained backbone weights (Hugging Face dir/file, NVlabs/mmseg .pth, TAO or timm checkpoint)."
    )
    # Freezing a randomly initialised backbone is refused, so AutoML searches it only with pretrained weights.
    freeze_backbone: bool = spec(False, "Freeze the backbone (train the decoder only); needs pretrained weights "
                                 "(AutoML searches it only when pretrained_backbone_path is set).",
                                 automl_enabled=True, depends_on="model.backbone.pretrained_backbone_path")


@dataclass
class DecodeHeadConfig:
    in_channels: list[int] = spec(
        [64, 128, 320, 512], "Input channels of the decoder per stage (derived from the backbone when they differ).",
        automl_enabled=False,
    )
    in_index: list[int] = spec([0, 1, 2, 3], "Backbone stages fed to the head.", automl_enabled=False)
    feature_strides: list[int] = spec([4, 8, 16, 32], "Feature strides of the stages.", automl_enabled=False)
    align_corners: bool = spec(False, "align_corners of the decoder's bilinear upsampling. TAO's head ignores "
                                "this key (always false); true warns that TAO-trained weights expect false.")
    decoder_params: dict[str, int] = spec(
        {"embed_dim": 768}, "Decoder parameters: embed_dim (256, 512 or 768).", automl_enabled=False
    )


@dataclass
class ModelConfig:
    precise_msda: bool = spec(
        False, "ViT backbones: sample the deformable attention with a gather-based bilinear sampler whose CUDA "
        "backward is deterministic (default: grid_sample; same values). Ignored, with a warning, for MiT/FAN.")
    backbone: BackboneConfig = group(BackboneConfig, "Backbone.")
    decode_head: DecodeHeadConfig = group(DecodeHeadConfig, "SegFormer all-MLP decode head.")


# ---------------------------------------------------------------------------------------------- dataset
@dataclass
class RandomFlipConfig:
    vflip_probability: float = spec(0.5, "Vertical flip probability.", valid_min=0, valid_max=1, automl_enabled=True)
    hflip_probability: float = spec(0.5, "Horizontal flip probability.", valid_min=0, valid_max=1,
                                     automl_enabled=True)
    enable: bool = spec(True, "Enable random flips.", automl_enabled=True)


@dataclass
class RandomRotateConfig:
    rotate_probability: float = spec(0.5, "Random rotation probability.", valid_min=0, valid_max=1,
                                     automl_enabled=True)
    angle_list: list[float] = spec([90, 180, 270], "Angles (degrees) to rotate by.", automl_enabled=False)
    enable: bool = spec(True, "Enable random rotation.", automl_enabled=True)


@dataclass
class RandomColorConfig:
    # AutoML searches the jitters up to 0.5 (hue 0.3, TAO's default): beyond, images stop looking like the data.
    brightness: float = spec(0.3, "Brightness jitter (torchvision ColorJitter range).", valid_min=0.0,
                             valid_max=2.0, automl_enabled=True, automl_range=(0.0, 0.5, "linear"))
    contrast: float = spec(0.3, "Contrast jitter.", valid_min=0.0, valid_max=2.0, automl_enabled=True,
                           automl_range=(0.0, 0.5, "linear"))
    saturation: float = spec(0.3, "Saturation jitter.", valid_min=0.0, valid_max=2.0, automl_enabled=True,
                             automl_range=(0.0, 0.5, "linear"))
    hue: float = spec(0.3, "Hue jitter (0 <= hue <= 0.5).", valid_min=0.0, valid_max=0.5, automl_enabled=True,
                      automl_range=(0.0, 0.3, "linear"))
    enable: bool = spec(True, "Enable colour jitter.", automl_enabled=True)
    color_probability: float = spec(0.5, "Colour jitter probability.", valid_min=0, valid_max=1,
                                    automl_enabled=True)


@dataclass
class ScaleRandomCropConfig:
    scale_range: list[float] = spec([1, 1.2], "Random scale range before the crop.", automl_enabled=False)
    enable: bool = spec(True, "Enable random scale + crop.", automl_enabled=True)


@dataclass
class AugmentationConfig:
    random_flip: RandomFlipConfig = group(RandomFlipConfig, "Random flips.")
    random_rotate: RandomRotateConfig = group(RandomRotateConfig, "Random rotation.")
    random_color: RandomColorConfig = group(RandomColorConfig, "Colour jitter.")
    with_scale_random_crop: ScaleRandomCropConfig = group(ScaleRandomCropConfig, "Random scale + crop.")
    with_random_blur: bool = spec(True, "Enable random Gaussian blur.")
    with_random_crop: bool = spec(True, "Enable random crop.")
    mean: list[float] = spec([0.5, 0.5, 0.5], "Per-channel mean (images scaled to 0-1).", automl_enabled=False)
    std: list[float] = spec([0.5, 0.5, 0.5], "Per-channel std (images scaled to 0-1).", automl_enabled=False)


@dataclass
class QuantCalibrationDatasetConfig:
    images_dir: str | None = spec(None, "Images used to calibrate INT8 quantization (local dir or s3://).")


@dataclass
class DatasetSegmentConfig:
    root_dir: str | None = spec(
        None, "Dataset root in unet layout: images/<split>/ and masks/<split>/ (local dir or s3://bucket/prefix).",
        required=True,
    )
    dataset: str = spec("SFDataset", "Dataset class.", valid_options=["SFDataset"])
    num_classes: int = spec(2, "Number of classes in the training data.", valid_min=2, valid_max="inf",
                            math_cond=">0", popular=True)
    img_size: int = spec(256, "Input image size (pixels, square).", valid_min=32, popular=True)
    batch_size: int = spec(8, "Batch size per device for training and validation (evaluate and inference use it "
                           "too unless their own batch_size > 0); -1 (TAO's default spec) = 8, with a note.",
                           valid_min=-1, valid_max="inf", popular=True)
    workers: int = spec(1, "Data-loading worker processes.", valid_min=0, valid_max="inf")
    shuffle: bool = spec(True, "Shuffle the training data.")
    train_split: str = spec("train", "Train split folder name.")
    validation_split: str = spec("val", "Validation split folder name.")
    test_split: str = spec("val", "Test (evaluate) split folder name.")
    predict_split: str = spec("test", "Predict (inference) split folder name.")
    augmentation: AugmentationConfig = group(AugmentationConfig, "Training augmentations.")
    label_transform: str | None = spec(
        "norm", "Mask value transform: 'norm' maps 0/255 binary masks to 0/1 (palette rgb in 0-1); 'None' uses "
        "mask values as class ids (palette rgb in 0-255).", valid_options=["norm", "None"],
    )
    palette: list[dict[str, Any]] | None = spec(
        [
            {"label_id": 0, "mapping_class": "foreground", "rgb": [0, 0, 0], "seg_class": "foreground"},
            {"label_id": 1, "mapping_class": "background", "rgb": [1, 1, 1], "seg_class": "background"},
        ],
        "Classes: label_id, seg_class name, mapping_class, rgb colour (0-1 when label_transform=norm, else 0-255).",
        automl_enabled=False,
    )
    quant_calibration_dataset: QuantCalibrationDatasetConfig = group(
        QuantCalibrationDatasetConfig, "Calibration images for quantization."
    )
    ignore_index: int = spec(255, "(segformer_tao) Mask value excluded from loss and metrics.", valid_min=0,
                             valid_max=65535)
    check: str = spec("sample", "(segformer_tao) Dataset check before train/evaluate: full, sample or off.",
                      valid_options=["full", "sample", "off"])
    cache_dir: str | None = spec(None, "(segformer_tao) Local cache for s3:// datasets (read once, reuse).")
    max_image_pixels: int = spec(89_478_485, "(segformer_tao) Largest image or mask (width x height) read; a "
                                 "larger one is refused before decoding (decompression bombs). Default: PIL's "
                                 "limit, about 9459 x 9459.", valid_min=1)


@dataclass
class DatasetConfig:
    segment: DatasetSegmentConfig = group(DatasetSegmentConfig, "Segmentation dataset.")


# ------------------------------------------------------------------------------------------------ train
@dataclass
class CuDNNConfig:
    benchmark: bool = spec(False, "cudnn.benchmark.")
    deterministic: bool = spec(True, "Deterministic algorithms.")


@dataclass
class OptimConfig:
    monitor_name: str = spec("val_loss", "Monitored metric name (TAO key; val_miou is monitored for best).")
    optim: str = spec("adamw", "Optimizer.", valid_options=["adamw", "adam", "sgd"])
    lr: float = spec(6e-5, "Learning rate (backbone; the decoder gets lr x decoder_lr_mult).", valid_min=0,
                     valid_max="inf", automl_enabled=True, popular=True)
    policy: str = spec("linear", "LR decay policy after warmup.", valid_options=["linear", "step"])
    momentum: float = spec(0.9, "Momentum (AdamW beta1, SGD momentum).", valid_min=0.0, valid_max=1.0,
                           automl_enabled=True, automl_range=(0.8, 0.99, "linear"))
    weight_decay: float = spec(0.01, "Weight decay.", valid_min=0.0, valid_max=1.0, automl_enabled=True,
                               automl_range=(1e-4, 0.1, "log"))
    warmup_iters: int = spec(0, "(segformer_tao) Linear LR warmup steps; 0 = TAO default (1% of all steps for "
                             "policy=linear, none for step).",
                             valid_min=0, valid_max="inf")
    decoder_lr_mult: float = spec(10.0, "(segformer_tao) Decoder LR multiplier.", valid_min=0, valid_max="inf")


@dataclass
class TrainSegmentConfig:
    loss: str = spec("ce", "Segmentation loss: ce (cross-entropy) or mmiou (TAO's minimax IoU: -min - mean soft "
                           "IoU per image and class, logits resized to the mask).", valid_options=["ce", "mmiou"])
    weights: list[float] = spec([0.5, 0.5, 0.5, 0.8, 1.0], "Multi-scale loss weights (TAO key; unused by SegFormer).",
                                automl_enabled=False)


@dataclass
class TensorBoardConfig:
    enabled: bool = spec(False, "Enable TensorBoard logging (segformer_tao always writes CSV logs).")
    infrequent_logging_frequency: int = spec(2, "Epochs between image logs.", valid_min=0, valid_max="inf")


@dataclass
class TrainConfig:
    num_gpus: int = spec(1, "Number of GPUs (on a CPU-only machine: number of CPU processes).", valid_min=1,
                         popular=True)
    gpu_ids: list[int] = spec([0], "GPU ids to train on.", popular=True, automl_enabled=False)
    num_nodes: int = spec(1, "Number of nodes (multi-node when > 1).", valid_min=1, popular=True)
    seed: int = spec(1234, "Random seed; < 0 disables seeding.", valid_min=-1, valid_max="inf")
    cudnn: CuDNNConfig = group(CuDNNConfig, "cuDNN settings.")
    num_epochs: int = spec(10, "Number of epochs.", valid_min=1, valid_max="inf", popular=True)
    checkpoint_interval: int = spec(1, "Checkpoint every N units.", valid_min=1, popular=True)
    checkpoint_interval_unit: str = spec("epoch", "Unit of checkpoint_interval.", valid_options=["epoch", "step"])
    validation_interval: int = spec(1, "Validate every N epochs.", valid_min=1, popular=True)
    checkpoint_interval_minutes: float = spec(
        0.0, "(segformer_tao) Also write a full-state checkpoint (model_epoch_XXX_step_YYYYY.pth + latest) whenever "
        "this many minutes of training passed since the last one, mid-epoch included, so that a kill without warning "
        "(kill -9, node loss) loses at most that much work; 0 = off. See docs/clusters.md.", valid_min=0,
        valid_max="inf", automl_enabled=False)
    preemption_signal: str | None = spec(
        None, "(segformer_tao) A signal that preempts training besides SIGTERM and SIGUSR1 (e.g. SIGUSR2 or SIGINT): "
        "finish the step, write a resumable checkpoint, status PREEMPTED, exit code 75. See docs/clusters.md.",
        automl_enabled=False)
    slurm_requeue: bool = spec(
        False, "(segformer_tao) Under SLURM, a preempted run requeues its job (scontrol requeue $SLURM_JOB_ID) after "
        "its checkpoint is written; the requeued job resumes from it by itself.", automl_enabled=False)
    resume_training_checkpoint_path: str | None = spec(None, "Checkpoint to resume training from.")
    results_dir: str | None = spec(None, RESULTS_DIR_DOC)
    optim: OptimConfig = group(OptimConfig, "Optimizer and LR schedule.")
    pretrained_model_path: str | None = spec(None, "Pretrained full model (backbone + head) to start from.")
    segment: TrainSegmentConfig = group(TrainSegmentConfig, "Loss.")
    tensorboard: TensorBoardConfig = group(TensorBoardConfig, "TensorBoard.")
    use_distributed_sampler: bool = spec(False, "Use a DistributedSampler for multi-GPU training.")
    sync_batchnorm: bool = spec(False, "Synchronised BatchNorm across GPUs.")
    checkpointer: dict[str, Any] | None = spec(None, "TAO checkpointer settings (accepted; see docs).")
    enable_lr_monitor: bool | None = spec(False, "Log the learning rate.")
    precision: str = spec(
        "auto", "(segformer_tao) Training precision: auto = bf16-mixed where the hardware computes bf16 natively (a "
        "CUDA GPU of compute capability >= 8.0, a CPU with AVX-512 BF16 or AMX) and 32 (fp32) elsewhere, printed on "
        "the first line of the train output; or 32, bf16-mixed, 16-mixed (CUDA only). Checkpoints hold fp32 weights "
        "whatever the precision; evaluate, inference and export run fp32.",
        valid_options=["auto", "32", "bf16-mixed", "16-mixed"])
    clip_grad_norm: float = spec(0.0, "(segformer_tao) Gradient clipping max norm (0 = off).", valid_min=0,
                                 valid_max="inf")


# ------------------------------------------------------------------------------------- evaluate/inference
@dataclass
class EvaluateConfig:
    num_gpus: int = spec(1, "Number of GPUs.", valid_min=1, popular=True)
    gpu_ids: list[int] = spec([0], "GPU ids.", popular=True, automl_enabled=False)
    num_nodes: int = spec(1, "Number of nodes.", valid_min=1, popular=True)
    checkpoint: str | None = spec(None, "PyTorch checkpoint (.pth) to run.")
    trt_engine: str | None = spec(None, "TensorRT engine to run (GPU machines with TensorRT).")
    trust_engine: bool = spec(
        False, "(segformer_tao) Load trt_engine even when no gen_trt_engine job recorded its sha256 (an engine is "
        "executable code: by default it loads only when its hash matches <engine>.json / the job.json of the job "
        "that built it). Set true only for an engine you trust from elsewhere.")
    onnx_file: str | None = spec(None, "(segformer_tao) ONNX model (or OpenVINO IR .xml) to run on the CPU.")
    onnx_engine: str = spec(
        "auto", "(segformer_tao) What runs onnx_file: onnxruntime, openvino (the [openvino] extra), or auto = the "
        "faster of the installed ones, timed at start-up and printed. An OpenVINO IR (.xml) runs on openvino.",
        valid_options=["auto", "onnxruntime", "openvino"])
    cpu_precision: str = spec(
        "f32", "(segformer_tao) OpenVINO's float precision: f32, or bf16 where the CPU has native BF16 (AVX-512 "
        "BF16 or AMX; elsewhere a note and f32). ONNX Runtime runs f32; INT8 comes from quantize.backend=nncf.",
        valid_options=["f32", "bf16"])
    results_dir: str | None = spec(None, RESULTS_DIR_DOC)
    batch_size: int = spec(-1, "Batch size; -1 (TAO's default) = dataset.segment.batch_size, as TAO batches "
                           "evaluate and inference.", valid_min=-1, valid_max="inf")
    vis_after_n_batches: int = spec(16, "Save visualisations every N batches.", valid_min=1, valid_max="inf")


@dataclass
class InferenceConfig(EvaluateConfig):
    sliding_window: bool = spec(False, "(segformer_tao) Sliding-window inference for images larger than img_size.")
    flip_tta: bool = spec(False, "(segformer_tao) Horizontal-flip test-time augmentation.")
    source: str | None = spec(
        None, "(segformer_tao) What to segment, instead of dataset.segment.root_dir's predict_split: an image, a "
        "folder (searched recursively; non-image files skipped with a note), a glob ('photos/**/*.jpg'), a text file "
        "listing image paths, an s3:// prefix, or a video (mp4/mov/avi/mkv; the [video] extra). Output names keep "
        "each file's path relative to the source.")
    video_masks: str = spec(
        "png", "(segformer_tao) Masks of a video source: png = one label PNG per frame under masks/<video>/, video "
        "= one lossless (FFV1) mask video masks/<video>.mkv.", valid_options=["png", "video"])


# ----------------------------------------------------------------------------------------------- deploy
@dataclass
class ExportConfig:
    results_dir: str | None = spec(None, RESULTS_DIR_DOC)
    gpu_id: int = spec(0, "GPU index used for export.")
    checkpoint: str | None = spec(None, "Checkpoint (.pth) to export.")
    onnx_file: str | None = spec(None, "Output ONNX path (default <results_dir>/<checkpoint name>.onnx).")
    on_cpu: bool = spec(False, "Export on the CPU.")
    input_channel: int = spec(3, "Input channels.", valid_min=1, valid_options=[1, 3])
    # TAO defaults to 544x544 whatever the model was trained at, which silently changes the operating resolution;
    # unset means the checkpoint's img_size.
    input_width: int | None = spec(None, "Input width (pixels); default: the checkpoint's img_size (TAO: 544).",
                                   valid_min=32)
    input_height: int | None = spec(None, "Input height (pixels); default: the checkpoint's img_size (TAO: 544).",
                                    valid_min=32)
    opset_version: int = spec(17, "ONNX opset.", valid_min=1)
    batch_size: int = spec(-1, "Batch size of the ONNX input; -1 = dynamic.", valid_min=-1)
    verbose: bool = spec(False, "Verbose export log.")
    format: str = spec("onnx", "Export format: onnx, or (segformer_tao) openvino = the ONNX plus an OpenVINO IR "
                       "(<onnx name>.xml/.bin beside it; the [openvino] extra), or huggingface = a transformers "
                       "SegformerForSemanticSegmentation folder (MiT backbones; export.huggingface_dir). TAO's xdl "
                       "is not supported.", valid_options=["onnx", "xdl", "openvino", "huggingface"])
    huggingface_dir: str | None = spec(
        None, "(segformer_tao) Output folder of export.format=huggingface (default <results_dir>/<checkpoint "
        "name>_hf); must not exist yet or be empty.")
    serialize_nvdsinfer: bool = spec(False, "Write a DeepStream nvinfer config and labels file.")
    dynamic_hw: bool = spec(False, "(segformer_tao) Make input height/width dynamic too.")
    simplify: bool = spec(True, "(segformer_tao) Simplify the graph with onnxslim when installed.")
    full_resolution_output: bool = spec(
        False, "(segformer_tao) Output logits at input resolution instead of 1/4 (TAO's default)."
    )


@dataclass
class CalibrationConfig:
    cal_image_dir: list[str] = spec([], "Calibration image directories (legacy TensorRT INT8 calibrator).",
                                    automl_enabled=False)
    cal_cache_file: str | None = spec(None, "Calibration cache file.")
    cal_batch_size: int = spec(1, "Calibration batch size.", valid_min=1, popular=True)
    cal_batches: int = spec(1, "Number of calibration batches.", valid_min=1, popular=True)


@dataclass
class TensorRTConfig:
    workspace_size: int = spec(1024, "Builder workspace (MiB).", valid_min=0)
    min_batch_size: int = spec(1, "Optimization profile min batch.", valid_min=1, popular=True)
    opt_batch_size: int = spec(1, "Optimization profile opt batch.", valid_min=1, popular=True)
    max_batch_size: int = spec(1, "Optimization profile max batch.", valid_min=1, popular=True)
    layers_precision: list[str] | None = spec([], "Per-layer precisions, 'layer_name:fp32'.", automl_enabled=False)
    data_type: str = spec("fp16", "Engine precision.", valid_options=["fp32", "fp16", "bf16", "int8"])
    calibration: CalibrationConfig = group(CalibrationConfig, "INT8 calibration (legacy calibrator).")


@dataclass
class GenTrtEngineConfig:
    results_dir: str | None = spec(None, RESULTS_DIR_DOC)
    gpu_id: int = spec(0, "GPU index to build on.", valid_min=0, popular=True)
    onnx_file: str | None = spec(None, "ONNX model to build the engine from.", required=True)
    trt_engine: str | None = spec(None, "Output engine path (default <results_dir>/<onnx name>.engine).")
    timing_cache: str | None = spec(None, "Timing cache file (read and updated).")
    batch_size: int = spec(-1, "Batch size; -1 uses the tensorrt min/opt/max batch sizes.", valid_min=-1,
                           popular=True)
    verbose: bool = spec(False, "Verbose TensorRT log.")
    tensorrt: TensorRTConfig = group(TensorRTConfig, "TensorRT builder settings.")


@dataclass
class QuantizerSpecConfig:
    dtype: str = spec("", "Quantization data type (int8, fp8_e4m3fn, fp8_e5m2, native).")
    observer_or_fake_quant: str = spec("", "Observer (PTQ) or fake-quant (QAT) name.")
    quant_axis: int | None = spec(None, "Per-channel axis; None = per-tensor.")
    observer_or_fake_quant_kwargs: dict[str, Any] = spec({}, "Observer keyword arguments.", automl_enabled=False)


@dataclass
class LayerQuantizationConfig:
    module_name: str = spec("", "Module name or class name pattern.")
    weights: QuantizerSpecConfig | None = spec(None, "Weight quantization.")
    activations: QuantizerSpecConfig | None = spec(None, "Activation quantization.")


@dataclass
class QuantizeConfig:
    backend: str | None = spec(
        "onnxruntime", "Quantization backend (onnxruntime runs on CPU; the others need their packages; nncf writes "
        "an INT8 OpenVINO IR for CPUs, from the [openvino] extra).",
        valid_options=["onnxruntime", "modelopt.onnx", "modelopt.pytorch", "torchao", "nncf"],
    )
    mode: str | None = spec("static_ptq", "Quantization mode.", valid_options=["static_ptq", "weight_only_ptq"])
    algorithm: str | None = spec(
        "minmax", "Calibration algorithm.",
        valid_options=["minmax", "max", "entropy", "percentile", "awq_clip", "awq_lite", "awq_full", "rtn_dq"],
    )
    layers: list[LayerQuantizationConfig] | None = spec([], "Per-layer quantization settings.",
                                                        automl_enabled=False)
    skip_names: list[str] | None = spec([], "Layer/op names kept in float.", automl_enabled=False)
    model_path: str | None = spec(None, "Model to quantize (ONNX file or .pth checkpoint).", required=True)
    results_dir: str | None = spec(None, RESULTS_DIR_DOC)
    backend_kwargs: dict[str, Any] | None = spec({}, "Backend-specific arguments.", automl_enabled=False)
    device: str = spec("cuda", "Device for calibration (falls back to cpu when no GPU).",
                       regex="^(cuda|cpu|trt|cuda:[0-9]+)$")


# ----------------------------------------------------------------------------------------------- automl
@dataclass
class AutoMLConfig:
    algorithm: str = spec("bayesian", "(segformer_tao) Search algorithm.",
                          valid_options=["bayesian", "hyperband", "asha"])
    sampler: str = spec("auto", "(segformer_tao) Optuna sampler: gp (Gaussian process, sample-efficient for the "
                        "few trials a training budget allows; needs scipy), tpe, or auto = gp for bayesian when scipy "
                        "is installed, tpe otherwise (hyperband/asha always pair with tpe, which learns from pruned "
                        "trials).", valid_options=["auto", "gp", "tpe"])
    num_trials: int = spec(10, "(segformer_tao) Number of trials.", valid_min=1, valid_max="inf")
    max_epochs: int | None = spec(None, "(segformer_tao) Epochs per trial (default train.num_epochs).", valid_min=1)
    timeout: float | None = spec(None, "(segformer_tao) Stop starting trials after this many seconds.",
                                 valid_min=0)
    parameters: list[str] = spec([], "(segformer_tao) Keys to search instead of the train schema's "
                                 "automl_default_parameters (every automl_enabled key, as TAO); empty = all of those.")
    disabled_parameters: list[str] = spec([], "(segformer_tao) Keys excluded from the search.")
    storage: str | None = spec(None, "(segformer_tao) Optuna storage URL shared by workers on many hosts, e.g. "
                               "postgresql://user:password@host:5432/db (needs segformer_tao[automl-pg]); default: "
                               "a journal file in the results dir. The password is never shown or written.")
    seed: int = spec(0, "(segformer_tao) Sampler seed.")
    parallel_trials: int = spec(1, "(segformer_tao) Trials run at once on this machine, each as its own `segformer "
                                "train` child process on train.num_gpus GPUs of train.gpu_ids (CPU: a share of the "
                                "cores). 1: trials run one after another in this process.", valid_min=1,
                                valid_max="inf")
    heartbeat_interval: int = spec(60, "(segformer_tao) Seconds between a running trial's heartbeats in an "
                                   "automl.storage database; a trial silent for 3x this long is taken as dead (its "
                                   "worker was killed) and retried by another worker. Same on every worker.",
                                   valid_min=1, valid_max="inf")


# -------------------------------------------------------------------------------------------------- top
@dataclass
class ExperimentConfig:
    model_name: str | None = spec("segformer", "Model name.")
    encryption_key: str | None = spec(
        None, "Key to encrypt checkpoints at rest (never written to any file), taken exactly as typed. Recommended: "
        "encryption_key='${oc.env:SEGFORMER_KEY}' with the key in that environment variable (a key on the command "
        "line is visible in ps). ONNX files and TensorRT engines stay unencrypted (their runtimes read them as is).")
    encryption_strict: bool = spec(False, "(segformer_tao) With encryption_key set: refuse, instead of a warning, a "
                                   "plaintext file where one of our encrypted checkpoints is expected (resume, "
                                   "evaluate, inference, export, quantize). Pretrained weights load as plaintext.")
    results_dir: str | None = spec("", "Root for all outputs; each action writes into <results_dir>/<action> "
                                    "(unset: ./results).")
    wandb: WandBConfig = group(WandBConfig, "Weights & Biases.")
    mlflow: MLflowConfig = group(MLflowConfig, "(segformer_tao) MLflow tracking.")
    model: ModelConfig = group(ModelConfig, "Model.")
    dataset: DatasetConfig = group(DatasetConfig, "Dataset.")
    train: TrainConfig = group(TrainConfig, "Train.")
    evaluate: EvaluateConfig = group(EvaluateConfig, "Evaluate.")
    inference: InferenceConfig = group(InferenceConfig, "Inference.")
    export: ExportConfig = group(ExportConfig, "Export to ONNX.")
    gen_trt_engine: GenTrtEngineConfig = group(GenTrtEngineConfig, "TensorRT engine build.")
    quantize: QuantizeConfig = group(QuantizeConfig, "INT8 quantization.")
    automl_policy: str = spec("auto", "(segformer_tao) AutoML for train: auto, on or off.",
                              valid_options=["auto", "on", "off"])
    automl: AutoMLConfig = group(AutoMLConfig, "(segformer_tao) AutoML search.")
    parent_job: str | None = spec(None, "(segformer_tao) Results dir of a parent job to take the model from.")


def iter_fields(cls: type = ExperimentConfig, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Yield (dotted key, dataclass field) for every leaf key of the tree."""
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("group"):
            yield from iter_fields(f.default_factory, key + ".")
        else:
            yield key, f
