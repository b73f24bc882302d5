"""SecAgg+ (Bell et al., 2020) for HyDiscGAN: the protocol shared by the server (strategies.secure_aggregation)
and the clients (clients.secure_aggregation), composed of Flower's primitives (docs/secure-aggregation.md)."""
