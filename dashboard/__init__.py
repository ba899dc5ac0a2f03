"""The vitlens dashboard: a Streamlit app over a results store (read-only).

Start it with ``vitlens dashboard --store DIR``; :func:`dashboard.launch.serve` builds the ``streamlit run``
command line.
"""
