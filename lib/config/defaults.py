"""Every configuration key, with its default.

The defaults are the released IODINE model for CLEVR6 (DeepMind's TF1 code and configs); the
other datasets' config files override only what differs. Every key that deviates from the
released behaviour defaults to the released behaviour.
"""

import math

from yacs.config import CfgNode as CN

_C = CN()

# Folder for checkpoints, TensorBoard events, config.yaml, log.txt; "" = logs/<config file stem>.
_C.OUTPUT_DIR = ""
# Seed for Python, NumPy and torch (training noise, data order, initialisation).
_C.SEED = 0

# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Where to run: "auto" (CUDA when present, else CPU), "cpu" or "cuda".
_C.MODEL.DEVICE = "auto"
# Checkpoint whose model weights start a fresh run (train) or are evaluated (test); "" = none.
_C.MODEL.WEIGHT = ""
# Store activations channels-last (NHWC) in the conv stacks; a speed switch, same numbers.
_C.MODEL.CHANNELS_LAST = False
# torch.compile each step's likelihood/losses and refinement (input assembly + network), decoder
# eager so the gradient inputs compute no weight gradients (IODINE.compile_ "step"); speed only.
_C.MODEL.COMPILE = False
# Arithmetic precision: "fp32" (TF32 off for matmul and cuDNN: parity with the released
# numbers), "tf32" (TF32 matmul and convolutions on CUDA) or "bf16" (bf16 autocast; the
# likelihood, KL, LayerNorm inputs, gradient inputs, LSTM state and decoder output stay fp32).
# bf16 on CPU needs native bf16 (AVX512-BF16 or AMX); elsewhere it is refused.
_C.MODEL.PRECISION = "fp32"
# Deterministic algorithms (torch.use_deterministic_algorithms, cuDNN deterministic, no cuDNN
# benchmark, CUBLAS_WORKSPACE_CONFIG); False lets cuDNN pick the fastest kernels.
_C.MODEL.DETERMINISTIC = False

_C.MODEL.IODINE = CN()
# Number of slots K (paper K); CLEVR6 7.
_C.MODEL.IODINE.NUM_SLOTS = 7
# Number of refinement steps T (paper T); T+1 decodes and losses per image.
_C.MODEL.IODINE.NUM_ITERS = 5
# Size of each slot's latent z_k (paper: latent dimension).
_C.MODEL.IODINE.LATENT_DIM = 64
# Pixel likelihood of each component: "logistic" (released) or "gaussian" (paper text).
_C.MODEL.IODINE.LIKELIHOOD = "logistic"
# Fixed scale of the pixel likelihood: logistic scale s (released 0.03) or Gaussian sigma.
_C.MODEL.IODINE.PIXEL_SCALE = 0.03
# Std of the N(0, s) latent prior; released sqrt(softplus(0)) ~ 0.833, paper 1.0.
_C.MODEL.IODINE.PRIOR_SCALE = math.sqrt(math.log(2.0))
# Weights w_t of the T+1 per-step losses: "linspace" (released, linspace(0, 1, T+1)),
# "uniform" (all 1) or "last" (only step T).
_C.MODEL.IODINE.LOSS_WEIGHTS = "linspace"
# Sample z at evaluation with a reseeded generator (released: sampling); False = posterior mean.
_C.MODEL.IODINE.EVAL_SAMPLE = True
# Seed of the evaluation-mode noise generator (one draw per step and slot, shared by the batch).
_C.MODEL.IODINE.EVAL_SEED = 0
# Weight initialisation: "released" (truncated normal std 1/sqrt(fan_in), zero biases, the LSTM
# as MODEL.REFINEMENT.LSTM_INIT says, Glorot-uniform initial lambda) or "pytorch" (PyTorch
# module defaults everywhere, LSTM included; LSTM_INIT and LSTM_FORGET_BIAS are then unused).
_C.MODEL.IODINE.INIT = "released"
# Initial posterior std of every slot; 0 = released (Glorot-uniform raw scale, std ~0.83).
# A small value lets the decoder read z before the refinement has learned to shrink the noise.
_C.MODEL.IODINE.INIT_POSTERIOR_SCALE = 0.0
# Keep the released legacy constants: capacity 0.5 inputs and the decoder's appended 5.0.
_C.MODEL.IODINE.LEGACY_CONSTANTS = True
# Loss L_t whose gradients (dmask, dcomponents, dzp) feed the refinement inputs: "mean"
# (released: batch mean over the per-process batch, so gradients are divided by B before the
# LayerNorm; eval mode divides by EVAL_GRAD_DIVISOR) or "sum" (per-image sum, no division).
# With LayerNorm eps 1e-5 the two differ for low-variance slots.
_C.MODEL.IODINE.GRAD_INPUT_REDUCTION = "mean"
# Fixed B (images) dividing the eval-mode gradient inputs under "mean", so evaluation does not
# depend on the batch; 0 = the per-process training batch the checkpoint records (training:
# SOLVER.IMS_PER_BATCH // (processes x SOLVER.ACCUMULATE_STEPS); weights without a record:
# SOLVER.IMS_PER_BATCH // SOLVER.ACCUMULATE_STEPS).
_C.MODEL.IODINE.EVAL_GRAD_DIVISOR = 0

_C.MODEL.REFINEMENT = CN()
# Image-sized refinement inputs, released order (alphabetical); drop names to ablate.
_C.MODEL.REFINEMENT.IMAGE_INPUTS = (
    "capacity",
    "components",
    "coordinates",
    "counterfactual",
    "dcomponents",
    "dmask",
    "image",
    "log_prob",
    "mask",
    "posterior",
    "pred_mask",
)
# Vector refinement inputs concatenated after the MLP, released order [h, dzp, flat_capacity, zp].
_C.MODEL.REFINEMENT.VECTOR_INPUTS = ("dzp", "flat_capacity", "zp")
# Coordinate channels of the refinement input: "linear" (2: x then y) or "cosine" (8).
_C.MODEL.REFINEMENT.COORD_TYPE = "linear"
# Output channels of each stride-2 conv of the refinement network (ELU after each).
_C.MODEL.REFINEMENT.CONV_CHANNELS = (64, 64, 64, 64)
# Kernel size of the refinement convs (pixels).
_C.MODEL.REFINEMENT.KERNEL_SIZE = 3
# Stride of the refinement convs.
_C.MODEL.REFINEMENT.STRIDE = 2
# How the conv features become a vector: "avg" (global average pool, released) or "flatten"
# (the released CNN module's other mode: keeps where features are, for small images).
_C.MODEL.REFINEMENT.POOL = "avg"
# Hidden sizes of the MLP after global average pooling (ELU between, last layer linear).
_C.MODEL.REFINEMENT.MLP_SIZES = (256, 256)
# Hidden size of the per-slot LSTM; 0 = no LSTM (Tetrominoes).
_C.MODEL.REFINEMENT.LSTM_SIZE = 256
# LSTM initialisation under MODEL.IODINE.INIT "released": "sonnet" (released Sonnet 1.35:
# weights and gate biases truncated normal, std 1/sqrt(input + hidden), bias_hh frozen at 0) or
# "zero_bias" (earlier versions: zero gate biases, bias_hh trainable, 1,024 more CLEVR6 params).
_C.MODEL.REFINEMENT.LSTM_INIT = "sonnet"
# Constant added to the LSTM forget-gate pre-activation (Sonnet forget_bias; folded into
# bias_ih at initialisation, so it is trainable from there).
_C.MODEL.REFINEMENT.LSTM_FORGET_BIAS = 1.0
# Padding of stride-2 convs: "tf_same" (TensorFlow SAME, extra pixel bottom/right, released)
# or "symmetric" (PyTorch padding=k//2; a documented deviation).
_C.MODEL.REFINEMENT.PADDING = "tf_same"

_C.MODEL.DECODER = CN()
# Output channels of the hidden stride-1 convs of the spatial broadcast decoder (ELU after each).
_C.MODEL.DECODER.CONV_CHANNELS = (64, 64, 64, 64)
# Kernel size of the hidden decoder convs (pixels).
_C.MODEL.DECODER.KERNEL_SIZE = 3
# Kernel size of the last decoder conv (to 4 channels: mask logit + 3 means).
_C.MODEL.DECODER.OUTPUT_KERNEL_SIZE = 3
# Compute the first decoder conv as a matmul on z plus a shared coordinate conv; exact, faster.
_C.MODEL.DECODER.FACTORIZED_FIRST_LAYER = True
# Initial slope of the mask logit with distance from (z_0, z_1) (coordinates in [-1, 1]);
# 0 = released init. > 0 starts masks as Voronoi cells of slot positions (a deviation).
_C.MODEL.DECODER.BLOB_INIT_GAIN = 0.0

_C.MODEL.FACTOR_REGRESSOR = CN()
# The released factor regressor (linear map from detached final z per slot to the object
# factors; its loss joins the total): "auto" = on when every DATASETS.TRAIN name has a factor
# mapping (built-in CLEVR, Multi-dSprites, Tetrominoes; off for folder: and sprites), or
# True / False. Its parameters are not part of IODINE's count.
_C.MODEL.FACTOR_REGRESSOR.ENABLED = "auto"
# Weight of its loss in the total (released: 1.0).
_C.MODEL.FACTOR_REGRESSOR.LOSS_WEIGHT = 1.0

# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Side of the square model input in pixels (images are cropped/resized to it).
_C.INPUT.IMAGE_SIZE = 128
# How images are resized to IMAGE_SIZE: "" = the data's own protocol (lib.spec.DATA_RESIZE:
# "tf1" for DeepMind's datasets and their stand-ins, ClevrTex "pil_bilinear", EfficientMORL
# "pil_bicubic", folders and object-centric library files "bilinear"), or one method for all:
# "tf1" (TF 1.14 resize_images, no antialiasing or half-pixel centres; labels at
# floor(i * in / out)), "bilinear" (antialiased, half-pixel centres), "nearest" (image sampled
# at the label map's pixel centres: no pixel blends two objects), "pil_bilinear" /
# "pil_bicubic" (PIL's resize of the 8-bit image). Label maps: always nearest.
_C.INPUT.RESIZE = ""
# Crop (row0, row1, col0, col1) in stored pixels replacing the data's own (CLEVR's official crop,
# else the centre square); () = the data's own. The object-centric library's Tetrominoes:
# (2, 34, 2, 34) with IMAGE_SIZE 32.
_C.INPUT.CROP = ()

# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# Training dataset names (registry names or folder:<path>); a bare string is one name.
_C.DATASETS.TRAIN = ("clevr6_train",)
# Evaluation dataset names.
_C.DATASETS.TEST = ("clevr6_test",)
# Folder holding the built-in datasets, one subfolder each (written by tools/prepare_data.py).
_C.DATASETS.ROOT = "data"
# Python modules (dotted names) or .py files imported before datasets are built, so that the
# dataset classes they register (lib.data.build.register_dataset) can be named in TRAIN / TEST.
_C.DATASETS.IMPORTS = ()
# Largest number of objects (labels > 0) allowed in a label map; 0 = no limit.
_C.DATASETS.MAX_OBJECTS = 0
# Read at preparation only: test examples a prepared set gets, stored last (the _test split
# reads its size from the folder's meta.json, num_test).
_C.DATASETS.TEST_SIZE = 320
# Read at preparation only: training examples generated for a missing built-in dataset.
_C.DATASETS.GENERATE_SIZE = 50000
# Read at preparation only: generator seed of a missing built-in dataset.
_C.DATASETS.GENERATE_SEED = 0
# Read at preparation only: official CLEVR conversion, raw records of the training part (test =
# the next TEST_SIZE filtered scenes).
_C.DATASETS.CLEVR_TRAIN_RECORDS = 70000

# ---------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
# Worker processes per data loader (0 = load in the main process).
_C.DATALOADER.NUM_WORKERS = 2

# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# Number of optimiser steps to train for (released 1e6).
_C.SOLVER.MAX_ITER = 1000000
# Total images per optimiser step over all processes (released 32 for CLEVR6 on 8 GPUs).
_C.SOLVER.IMS_PER_BATCH = 32
# Adam learning rate, used as written (configs state the batch-scaled value).
_C.SOLVER.BASE_LR = 1e-3
# Adam beta1 (released 0.95).
_C.SOLVER.BETA1 = 0.95
# Adam beta2 (TensorFlow default 0.999).
_C.SOLVER.BETA2 = 0.999
# Adam epsilon (TensorFlow default 1e-8).
_C.SOLVER.EPS = 1e-8
# Where EPS sits: "tf1" = lr_t m / (sqrt(v) + EPS), tf.train.AdamOptimizer (released); "torch" =
# lr m_hat / (sqrt(v_hat) + EPS), torch.optim.Adam (effective EPS sqrt(1 - BETA2^t) times smaller).
_C.SOLVER.ADAM = "tf1"
# Exponential decay: lr = BASE_LR * DECAY_RATE ** (iteration / DECAY_STEPS) (released 0.1, 1e6).
_C.SOLVER.DECAY_RATE = 0.1
# Iterations over which the learning rate decays by DECAY_RATE.
_C.SOLVER.DECAY_STEPS = 1000000
# Linear learning-rate warm-up iterations from 0 to BASE_LR; 0 = none (released).
_C.SOLVER.WARMUP_ITERS = 0
# Learning rate of the decoder relative to BASE_LR (released 1.0); < 1 lets the refinement
# learn to place slots before the decoder unlearns its initial spatial structure.
_C.SOLVER.DECODER_LR_FACTOR = 1.0
# Clip gradients to this global L2 norm (released 5.0); 0 = no clipping.
_C.SOLVER.GRAD_CLIP_NORM = 5.0
# Micro-batches whose gradients are accumulated before each step (reach the paper batch).
_C.SOLVER.ACCUMULATE_STEPS = 1
# Iterations between checkpoints (a checkpoint is also written at the end).
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Number of most recent checkpoints kept on disk.
_C.SOLVER.CHECKPOINT_KEEP = 3
# Resume from OUTPUT_DIR/last_checkpoint when it exists; False starts over.
_C.SOLVER.RESUME = True
# Consecutive non-finite losses or gradients (each step skipped) before training stops.
_C.SOLVER.MAX_NONFINITE = 20

# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
# Images per evaluation batch (total over processes).
_C.TEST.IMS_PER_BATCH = 32
# Slots K at test time; 0 = as trained (raise it for the generalisation test).
_C.TEST.NUM_SLOTS = 0
# Refinement steps T at test time; 0 = as trained.
_C.TEST.NUM_ITERS = 0
# Iterations between evaluations on a fixed held-out batch during training; 0 = never.
_C.TEST.EVAL_PERIOD = 5000
# Images of the first test dataset evaluated during training (the fixed held-out batch).
_C.TEST.EVAL_NUM_IMAGES = 64
# test_net also writes each image's argmax-slot label map as PNG under OUTPUT_DIR/predictions.
_C.TEST.SAVE_PREDICTIONS = False
# Score label maps at their stored resolution after the crop (not resized); predicted masks
# are upsampled to it (bicubic, as EfficientMORL's evaluation does). False = at IMAGE_SIZE.
_C.TEST.NATIVE_LABELS = False

# ---------------------------------------------------------------------------------------------
_C.LOG = CN()
# Iterations between scalar logs (TensorBoard and log.txt).
_C.LOG.PERIOD = 20
# Iterations between image summaries; 0 = only at evaluations.
_C.LOG.IMAGE_PERIOD = 1000
# Images shown in each image summary.
_C.LOG.NUM_IMAGES = 4

# SOLVER.AMP (a bool) was removed; a config that still sets it gets an error naming its
# replacement.
_C.register_renamed_key(
    "SOLVER.AMP", "MODEL.PRECISION", message="SOLVER.AMP True is MODEL.PRECISION bf16"
)
# The compiled training step (SOLVER.COMPILE_STEP, _MODE, _BACKEND) was removed (no measured
# gain); a config that still sets them loads with a warning (MODEL.COMPILE remains).
for _removed in ("SOLVER.COMPILE_STEP", "SOLVER.COMPILE_MODE", "SOLVER.COMPILE_BACKEND"):
    _C.register_deprecated_key(_removed)
del _removed
