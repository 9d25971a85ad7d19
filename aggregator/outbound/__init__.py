"""What goes out to operators: provider binds and pools, rate, breakers, SMPP outcome classes."""
