"""{{name}}: an edgefn function."""

from edgefn import App, HTTPError, Request

app = App()


@app.get("/")
def index(request: Request) -> dict[str, str]:
    return {"message": "Hello from {{name}}!"}


@app.get("/hello/{name}")
def hello(request: Request) -> str:
    greeting = request.query.get("greeting", "Hello")
    return f"{greeting}, {request.path_params['name']}!\n"


@app.post("/echo")
def echo(request: Request) -> dict[str, object]:
    data = request.json()
    if not isinstance(data, dict):
        raise HTTPError(422, "expected a JSON object")
    return {"you_sent": data}
