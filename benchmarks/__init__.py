"""Speed and scale measurements, side by side with peers where one exists."""
