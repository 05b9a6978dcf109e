"""Vision: the LWM VQGAN (frames <-> codes), its safe loading, and media files.

vqgan.py is the Flax model, config.py its config and presets, codec.py the object that encodes and decodes
on a mesh, loading.py the specs and checkpoints (`lwm_core.load_vqgan`; the released pickle is read by
lwm_core/checkpoint/safe_pickle.py); media.py reads and writes images and videos; encode.py turns many
inputs (files, folders, manifests) into codes for `lwm vqgan encode`; train.py trains a VQGAN on the
frames of a folder for `lwm vqgan train`.
"""
