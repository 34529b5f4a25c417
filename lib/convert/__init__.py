"""Read DeepMind's released TF1 IODINE checkpoints without TensorFlow and convert them.

``tf_checkpoint`` reads TensorFlow V2 checkpoints, ``released`` names the released variables
and maps them to ours (both need only NumPy), ``convert`` builds and checks the converted
checkpoint (torch). Import the submodules directly.
"""
