"""The node tree: pseudo-files with kernel semantics, resolved from an ABI profile.

``nodes`` holds the file kinds (sysfs text and binary attributes, debugfs seq files, region
windows on physical memory, emulator controls); ``tree`` resolves a profile's entries into
stable node instances and inode numbers.  Neither imports pyfuse3 nor the machine model.
"""

from kho_fs.tree.nodes import (
    BinaryAttribute,
    ControlFile,
    DebugfsBlob,
    DebugfsSeqFile,
    Directory,
    File,
    Node,
    OpenFile,
    RegionFile,
    StagingFile,
    TextAttribute,
)
from kho_fs.tree.tree import (
    ROOT_INO,
    Entry,
    EntryChange,
    ManualProfile,
    NodeTree,
    Profile,
    TreeChanges,
)

__all__ = [
    "ROOT_INO",
    "BinaryAttribute",
    "ControlFile",
    "DebugfsBlob",
    "DebugfsSeqFile",
    "Directory",
    "Entry",
    "EntryChange",
    "File",
    "ManualProfile",
    "Node",
    "NodeTree",
    "OpenFile",
    "Profile",
    "RegionFile",
    "StagingFile",
    "TextAttribute",
    "TreeChanges",
]
