"""spark-submit entry points (item_embed.py, user_embed.py) and the transformations they run.

The entry points are thin (arguments, session, read, write, publish); each transformation is a function
`DataFrame -> DataFrame` (item_frames.py, user_frames.py) over plain pandas-batch functions
(item_batches.py, user_batches.py) that call feature_gen.inference.encoders, the one inference path.
"""
