"""The studio: a web page to type a prompt and watch the image form (python handler.py --studio).

app.py serves the page and a small JSON + Server-Sent Events API; jobs.py runs each job from a
*source* (an async generator of a job's outputs: the worker's own RunPod handler, or endpoint.py's
proxy to a RunPod endpoint) and fans its outputs out to the page; form.py describes the form from
the input schema; page/ is the plain HTML, CSS and JavaScript, no build step, nothing from a CDN.
"""
