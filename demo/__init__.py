"""`gpux demo`: the exchange with a simulated market trading on it through the SDK (docs/demo.md)."""
