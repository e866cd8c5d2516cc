// The drill webapp of tests/ajp.rs: a session counter, a body counter and
// a large download, compiled by the test with javac against Tomcat's
// servlet-api.jar and served over AJP by real Tomcat instances.
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import jakarta.servlet.http.HttpSession;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.zip.CRC32;

public class Drill extends HttpServlet {
    @Override
    protected void service(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        String node = System.getProperty("drill.node", "?");
        String path = req.getServletPath();
        resp.setHeader("X-Node", node);
        if (path.equals("/count")) {
            HttpSession s = req.getSession(true);
            Integer n = (Integer) s.getAttribute("n");
            n = (n == null) ? 1 : n + 1;
            s.setAttribute("n", n);
            text(resp, "node=" + node + " count=" + n);
        } else if (path.equals("/echo")) {
            InputStream in = req.getInputStream();
            byte[] buf = new byte[65536];
            long total = 0;
            CRC32 crc = new CRC32();
            int r;
            while ((r = in.read(buf)) > 0) {
                total += r;
                crc.update(buf, 0, r);
            }
            text(resp, "node=" + node + " bytes=" + total + " crc=" + Long.toHexString(crc.getValue()));
        } else if (path.equals("/big")) {
            long mib = Long.parseLong(req.getParameter("mib"));
            resp.setContentType("application/octet-stream");
            if (req.getParameter("chunked") == null) {
                resp.setContentLengthLong(mib << 20);
            }
            byte[] block = new byte[65536];
            for (int i = 0; i < block.length; i++) {
                block[i] = (byte) (i % 251);
            }
            OutputStream out = resp.getOutputStream();
            for (long i = 0; i < (mib << 4); i++) {
                out.write(block);
            }
        } else if (path.equals("/info")) {
            text(resp, "remote=" + req.getRemoteAddr() + " port=" + req.getRemotePort()
                + " secure=" + req.isSecure() + " scheme=" + req.getScheme()
                + " method=" + req.getMethod() + " query=" + req.getQueryString()
                + " host=" + req.getServerName() + ":" + req.getServerPort()
                + " cipher=" + req.getAttribute("jakarta.servlet.request.cipher_suite")
                + " keysize=" + req.getAttribute("jakarta.servlet.request.key_size"));
        } else {
            resp.sendError(404);
        }
    }

    private static void text(HttpServletResponse resp, String s) throws IOException {
        resp.setContentType("text/plain");
        resp.getWriter().print(s + "\n");
    }
}
