package io.pytorchbyoc.serve;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
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

    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        boolean ok = ready(ctx);
        rsp.setContentType("application/json");
        rsp.setStatus(ok ? 200 : 503, ok ? "OK" : "Service Unavailable");
        String body = ok ? "{\"status\": \"Healthy\"}\n" : "{\"status\": \"Loading\", \"code\": 503}\n";
        rsp.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
    }
}
