"""Where cities come from: synthetic and OpenStreetMap generators, and the bulk writer."""
