"""Full int8 in the training loop: the LiteRT converter's rounding simulated
in the forward pass, so that a model fine-tuned (or shrunk) with it is the
model `export(int8=True)` writes.

What is simulated, as the converter quantizes a Keras model for full int8
(`export(..., int8=True)`):

- **Weights**: symmetric per-channel int8 (scale `max|w| / 127` per output
  channel: a Dense unit, a Conv filter, a DepthwiseConv channel; values in
  [-127, 127], rounded half away from zero), with straight-through
  gradients. A zero stays exactly zero. Per-channel rounding commutes with
  a per-channel factor, so quantizing the kernel is quantizing the kernel
  the converter gets after folding a following BatchNormalization into it.
- **Activations**: per-tensor asymmetric int8 at the tensors the converter
  quantizes after fusion: the model's inputs and each layer's output,
  except where the converter fuses the layer into the next (a Conv, Dense
  or Add followed only by a BatchNormalization and/or a ReLU/ReLU6: one
  tensor, after the activation) or keeps its input's scale (reshapes,
  max pooling, padding, dropout). Ranges are the converter's: the min and
  max over the representative samples (widened to hold 0) of the float
  model in inference mode, measured again at each `calibrate()`. Softmax
  and sigmoid outputs have the converter's fixed range (scale 1/256), tanh
  1/128. Inside a range the gradient passes straight through; outside, it
  is 0 (`keras.quantizers.fake_quant_with_min_max_vars`).
- **Approximated**: biases stay float (the converter's are int32 at the
  product of the scales); a layer's built-in activation other than
  ReLU/ReLU6/softmax/sigmoid/tanh gets one range after it (the converter
  may round before it too); a separable convolution's depthwise output is
  not rounded; a shared layer has one range for all its calls.
- **Left float** (with a warning naming them): layers with weights other
  than Dense, Conv1D/2D, DepthwiseConv1D/2D, SeparableConv1D/2D and
  BatchNormalization (Conv3D, transposed convolutions, Embedding,
  normalization and attention layers, recurrent layers, nested models):
  the converter quantizes some of them and leaves others float, so there
  the file may differ from the simulation.

The layers' `call`s are wrapped while the simulation runs (no wrapper
layers): once it stops, the model is the user's float model again.
"""

from keras_regkit.quantization.simulation import Int8Simulation, fake_quant_kernel, kernels
from keras_regkit.quantization.training import Int8Training

__all__ = ["Int8Simulation", "Int8Training", "fake_quant_kernel", "kernels"]
