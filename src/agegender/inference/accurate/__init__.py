"""The accurate mode: the flagship stacked with a head on dlib's face-recognition descriptors.

``dlib_format`` reads dlib's ``.dat`` network, ``onnx_graph`` writes it as ONNX, ``stacked`` runs the stack.
"""
