"""Generation engines behind one small async interface (see base.py)."""
