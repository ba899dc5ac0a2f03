"""One Streamlit page script per view, registered by ``dashboard/app.py`` with ``st.navigation``.

(Not named ``pages/``: Streamlit treats a ``pages/`` folder beside the entry script as a legacy multipage app
and runs its files without the entry script, and so without the shared sidebar, on a fresh server's first
request.)
"""
