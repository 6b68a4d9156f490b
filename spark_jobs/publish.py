"""Publish a completely written staging folder as a version, through Hadoop's FileSystem API.

The same two-rename swap as feature_gen.store.offline_store.publish_local (old version aside, new one in,
old one deleted), done by the JVM so it works on whatever file system the output lives on (local, HDFS;
on object stores without atomic rename, use a table format instead). A reader never sees a mix of two
runs' files; a crash between the renames leaves the old version under `_replaced-*` for a re-run to
clean up.
"""

from __future__ import annotations

import uuid


def publish(spark, staging: str, target: str) -> None:
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    HPath = jvm.org.apache.hadoop.fs.Path
    src, dst = HPath(staging), HPath(target)
    fs = src.getFileSystem(conf)
    if not fs.exists(src):
        raise FileNotFoundError(f"{staging}: staging output not found; nothing to publish")
    retired = None
    fs.mkdirs(dst.getParent())  # the first version of a table: its folder does not exist yet
    if fs.exists(dst):
        retired = HPath(dst.getParent(), f"_replaced-{uuid.uuid4().hex[:12]}")
        if not fs.rename(dst, retired):
            raise OSError(f"could not move the previous {target} aside to {retired.toString()}")
    if not fs.rename(src, dst):
        raise OSError(f"could not rename {staging} to {target}")
    if retired is not None:
        fs.delete(retired, True)
    # Stale leftovers of crashed earlier runs (never visible to readers: the leading underscore).
    for status in fs.listStatus(dst.getParent()):
        name = status.getPath().getName()
        if name.startswith("_replaced-"):
            fs.delete(status.getPath(), True)
