"""The core every room above the models shares: the device mesh and its sharding rules
(`sharding`), the predict function and the inputs it reads (`inference`), and jitted programs
compiled per batch shape (`compiled`)."""
