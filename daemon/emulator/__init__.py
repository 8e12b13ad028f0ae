"""A local Galtea API emulator with fault injection."""
