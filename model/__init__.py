"""The networks and how they learn and speak; a library, no CLI. Imports pipeline/, never tools/."""
