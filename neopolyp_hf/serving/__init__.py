"""What only the Gradio Space (app.py) needs: display helpers, kept outputs, and starting the app
on a loopback port for its tests and benchmarks. Needs the `app` extra (from a checkout: pip install '.[app]')."""
