"""What a person sees at a terminal: tables that fit, live progress, closed pipes."""
