"""The installer of the ISO's live system: a disk chosen (by a person or an answer file),
partitioned, the appliance's root file system copied onto it from the medium's squashfs, both
boot loaders installed, and the answers left where first boot finds them. See docs/image.md.
"""
