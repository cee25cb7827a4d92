"""The repository's own tools, built on the stand-ins: the chaos run and the demo's data. Neither
deployed nor a stand-in of anything Microsoft hosts."""
