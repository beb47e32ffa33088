"""High availability: the pure decision engine, its inputs, fencing arithmetic."""
