package io.pytorchbyoc.serve;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Map;
import org.pytorch.serve.servingsdk.Context;
import org.pytorch.serve.servingsdk.Model;
import org.pytorch.serve.servingsdk.ModelServerEndpoint;
import org.pytorch.serve.servingsdk.Worker;
import org.pytorch.serve.servingsdk.annotations.Endpoint;
import org.pytorch.serve.servingsdk.annotations.helpers.EndpointTypes;
import org.pytorch.serve.servingsdk.http.Request;
import org.pytorch.serve.servingsdk.http.Response;

/**
 * GET /ping: 200 only while every worker of every model has its model loaded.
 *
 * <p>TorchServe's own /ping answers 200 as soon as the frontend is up, while
 * workers are still loading (or crash-looping): SageMaker would send traffic
 * too early. A plugin endpoint named "ping" is looked up before the built-in one.
 * After SIGTERM `serve` writes a "draining" marker in BYOC_SERVE_STATUS_DIR and
 * /ping answers 503 so that traffic goes elsewhere while in-flight requests finish.
 * Other methods get 405 (the SDK's defaults answer 500).
 */
@Endpoint(
        urlPattern = "ping",
        endpointType = EndpointTypes.INFERENCE,
        description = "Healthy once every worker has loaded its model")
public class Ping extends ModelServerEndpoint {

    static boolean ready(Context ctx) {
        Map<String, Model> models = ctx.getModels();
        if (models.isEmpty()) {
            return false;
        }
        for (Model model : models.values()) {
            if (model.getModelWorkers().isEmpty()) {
                return false;
            }
            for (Worker worker : model.getModelWorkers()) {
                if (!worker.isRunning()) {
                    return false;
                }
            }
        }
        return true;
    }

    static boolean draining() {
        String dir = System.getenv("BYOC_SERVE_STATUS_DIR");
        return dir != null && Files.exists(Paths.get(dir, "draining"));
    }

    static void answer(Response rsp, int status, String reason, String body) throws IOException {
        rsp.setContentType("application/json");
        rsp.setStatus(status, reason);
        rsp.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
    }

    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        if (draining()) {
            answer(rsp, 503, "Service Unavailable", "{\"status\": \"Draining\", \"code\": 503}\n");
        } else if (ready(ctx)) {
            answer(rsp, 200, "OK", "{\"status\": \"Healthy\"}\n");
        } else {
            answer(rsp, 503, "Service Unavailable", "{\"status\": \"Loading\", \"code\": 503}\n");
        }
    }

    static void notAllowed(Response rsp) throws IOException {
        rsp.setHeader("Allow", "GET");
        answer(rsp, 405, "Method Not Allowed",
                "{\"code\": 405, \"type\": \"MethodNotAllowed\", \"message\": \"/ping takes GET\"}\n");
    }

    @Override
    public void doPost(Request req, Response rsp, Context ctx) throws IOException {
        notAllowed(rsp);
    }

    @Override
    public void doPut(Request req, Response rsp, Context ctx) throws IOException {
        notAllowed(rsp);
    }

    @Override
    public void doDelete(Request req, Response rsp, Context ctx) throws IOException {
        notAllowed(rsp);
    }
}
